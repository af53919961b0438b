"""The Rerun visualization node: messages in, an .rrd file out, read back with rerun's own dataframe
reader — the entities, how many rows each got on which timeline, and what they hold."""
import numpy as np
import pytest
import rerun as rr

from nodes.rerun_viz import TIMELINE_STAMP, TIMELINE_STEP, RerunViz
from pipeline.graph import load_graph
from pipeline.harness import NodeHarness, TimedInput
from pipeline.messages import ActionChunk, Command, Frame, Mask, PointCloud, RobotState, Waypoints
from pipeline.node import ParamsError

STEPS = 4
H, W, N = 6, 8, 5
CAMERA = "base_camera"
LOG_TICK = "log_tick"  # rerun's own timeline: one tick per log call (the stamp timeline keeps one row per stamp)
T0_NS = 1_000_000_000
PERIOD_NS = 50_000_000
HOLD_STEP = 2
CAM = f"/world/{CAMERA}"
EXPECTED_ENTITIES = {
    "/world", CAM, f"{CAM}/image", f"{CAM}/image/rgb", f"{CAM}/image/depth", f"{CAM}/image/segmentation",
    f"{CAM}/image/segmentation/names", f"{CAM}/image/mask", f"{CAM}/image/mask/names", f"{CAM}/cloud",
    f"{CAM}/waypoints", f"{CAM}/waypoints/path", f"{CAM}/waypoints/poses",
    "/world/ee", "/world/goal", "/robot/gripper", "/robot/qpos", "/actions/first", "/command/action",
    "/command/hold", "/log",
}
#: entity -> rows on the step timeline: one per step for everything a robot step carries
PER_STEP = {f"{CAM}/image/rgb": STEPS, f"{CAM}/image/depth": STEPS, f"{CAM}/image/segmentation": STEPS,
            f"{CAM}/cloud": STEPS, "/world/ee": STEPS, "/robot/qpos": STEPS, "/actions/first": STEPS,
            "/command/action": STEPS, "/command/hold": STEPS}


def stamp(t: int) -> int:
    return T0_NS + t * PERIOD_NS


def T_base_camera() -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = [0.3, 0.0, 0.6]
    return T


def step_messages(t: int) -> list[tuple[str, object]]:
    """What one robot step of the embodied loop carries, port by port."""
    done = t == STEPS - 1
    segmentation = np.zeros((H, W), np.int32)
    segmentation[2:4, 3:5] = 1
    xyz = np.full((N, 3), 0.1 * t, np.float32)
    return [
        ("state", RobotState(stamp_ns=stamp(t), frame_id="base", qpos=np.full(9, t, np.float32), qvel=np.zeros(9, np.float32),
                             ee_pose=np.array([0.1 * t, 0, 0.2, 1, 0, 0, 0], np.float32), gripper=1.0, step=t, done=done,
                             success=done, goal_pos=np.array([0.1, 0.1, 0.3], np.float32))),
        ("frame", Frame(stamp_ns=stamp(t), frame_id=CAMERA, image=np.full((H, W, 3), t, np.uint8),
                        intrinsics=np.array([[10, 0, W / 2], [0, 10, H / 2], [0, 0, 1]], np.float64),
                        depth=np.full((H, W), 0.5, np.float32), segmentation=segmentation,
                        segment_names={1: "cube", 2: "table"}, T_base_frame=T_base_camera(), step=t)),
        ("cloud", PointCloud(stamp_ns=stamp(t), frame_id=CAMERA, xyz=xyz, rgb=np.zeros((N, 3), np.uint8),
                             is_target=np.arange(N) < 2, T_base_frame=T_base_camera(), step=t)),
        ("actions", ActionChunk(stamp_ns=stamp(t), frame_id="base", actions=np.full((8, 7), t, np.float32),
                                stamps_ns=stamp(t) + PERIOD_NS * np.arange(8), start_step=t)),
        ("command", Command(stamp_ns=stamp(t), frame_id="base", action=np.full(7, t, np.float32), step=t,
                            hold=t == HOLD_STEP, reason="watchdog" if t == HOLD_STEP else "")),
    ]


def once_messages() -> list[tuple[str, object]]:
    """A plan (valid, then invalid) and masks: messages with no robot step."""
    poses = np.array([[0.0, 0.0, 0.5, 1, 0, 0, 0, 1], [0.0, 0.0, 0.45, 1, 0, 0, 0, -1]], np.float32)
    masks = np.zeros((2, H, W), bool)
    masks[0, :3], masks[1, 3:] = True, True
    return [
        ("waypoints", Waypoints(stamp_ns=stamp(0), frame_id=CAMERA, poses=poses, names=["pre_grasp", "grasp"],
                                T_base_frame=T_base_camera())),
        ("mask", Mask(stamp_ns=stamp(1), frame_id=CAMERA, masks=masks, scores=np.array([0.9, 0.6], np.float32),
                      labels=["cube", "table"])),
        ("waypoints", Waypoints(stamp_ns=stamp(2), frame_id=CAMERA, poses=np.zeros((0, 8), np.float32), valid=False,
                                reason="target not visible")),
    ]


def rows(recording, entity: str, index: str):
    """The rows `entity` got on timeline `index`, as a pyarrow table."""
    return recording.view(index=index, contents=entity).select().read_all()


def check_recording(path: str) -> None:
    recording = rr.dataframe.load_recording(path)
    columns = [str(c) for c in recording.schema().component_columns()]
    entities = {c.removeprefix("Component(").split(":")[0] for c in columns} - {"/__properties/recording"}
    assert entities == EXPECTED_ENTITIES
    for entity, count in PER_STEP.items():
        table = rows(recording, entity, TIMELINE_STEP)
        assert table.num_rows == count, entity
        assert table.column(TIMELINE_STEP).to_pylist() == list(range(STEPS)), entity
        assert table.column(TIMELINE_STAMP).cast("int64").to_pylist() == [stamp(t) for t in range(STEPS)], entity
    clouds = rows(recording, f"{CAM}/cloud", TIMELINE_STEP)
    assert clouds.column(f"{CAM}/cloud:Position3D").to_pylist()[3] == [[pytest.approx(0.3)] * 3] * N
    holds = rows(recording, "/command/hold", TIMELINE_STEP).column("/command/hold:Scalar").to_pylist()
    assert holds == [[float(t == HOLD_STEP)] for t in range(STEPS)]
    qpos = rows(recording, "/robot/qpos", TIMELINE_STEP).column("/robot/qpos:Scalar").to_pylist()
    assert qpos == [[float(t)] * 9 for t in range(STEPS)]
    # without a step: on the stamp timeline only
    assert rows(recording, f"{CAM}/waypoints/poses", TIMELINE_STEP).num_rows == 0
    poses = rows(recording, f"{CAM}/waypoints/poses", TIMELINE_STAMP)
    assert poses.num_rows == 1 and poses.column(f"{CAM}/waypoints/poses:Text").to_pylist() == [["pre_grasp", "grasp"]]
    assert rows(recording, f"{CAM}/image/mask", TIMELINE_STAMP).num_rows == 1
    texts = rows(recording, "/log", LOG_TICK).column("/log:Text").to_pylist()
    assert [text for row in texts for text in row] == [
        "no valid waypoints: target not visible", f"hold at step {HOLD_STEP}: watchdog",
        f"episode 0 ends at step {STEPS - 1}: success"]


def test_messages_handed_to_the_node_end_up_in_the_rrd_file(tmp_path):
    path = str(tmp_path / "direct.rrd")
    node = RerunViz({"rrd_path": path})
    node.setup()
    messages = once_messages() + [m for t in range(STEPS) for m in step_messages(t)]
    messages.sort(key=lambda item: item[1].stamp_ns)  # stable: within a stamp, in the order above
    for port, message in messages:
        getattr(node, RerunViz.handler(port))(message.frozen_view())
    node.close()
    check_recording(path)


def test_the_node_under_the_harness_writes_the_same_recording(tmp_path):
    path = str(tmp_path / "harness.rrd")
    harness = NodeHarness(RerunViz, {"rrd_path": path, "application_id": "viz_test"})
    messages = once_messages() + [m for t in range(STEPS) for m in step_messages(t)]  # delivered in time order, stably
    inputs = [TimedInput((message.stamp_ns - T0_NS) / 1e9, port, message) for port, message in messages]
    assert harness.run(inputs) == []  # a sink
    harness.close()
    assert harness.metrics["handler_errors"] == 0
    check_recording(path)
    assert rr.dataframe.load_recording(path).application_id() == "viz_test"


def test_it_writes_to_a_file_or_a_viewer_never_both_nor_neither():
    with pytest.raises(ParamsError, match="exactly one of rrd_path"):
        RerunViz({})
    with pytest.raises(ParamsError, match="exactly one of rrd_path"):
        RerunViz({"rrd_path": "x.rrd", "connect": "rerun+http://127.0.0.1:9876/proxy"})


def test_the_pick_cube_viz_graph_is_pick_cube_watched():
    watched, plain = load_graph("configs/pick_cube_viz.yaml"), load_graph("configs/pick_cube.yaml")
    assert set(watched.nodes) - set(plain.nodes) == {"viz"}
    assert {e.id for e in plain.edges} < {e.id for e in watched.edges}
    viz = watched.nodes["viz"]
    assert viz.cls is RerunViz and viz.params.rrd_path == "outputs/pick_cube.rrd"
    assert {e.target_port: f"{e.source}/{e.source_port}" for e in watched.inputs_of("viz")} == {
        "frame": "env/frame", "cloud": "cloud/cloud", "waypoints": "planner/waypoints",
        "actions": "expert/actions", "state": "env/state", "command": "controller/command"}
