import numpy as np
import pytest

from nodes.pointcloud import PointCloudNode
from nodes.waypoint_planner import GeometricPlanner, footprint, largest_cluster
from pipeline.harness import NodeHarness
from pipeline.messages import Frame, PointCloud, RobotState
from sim.pointcloud import invert_transform, pose_to_matrix, quat_to_matrix, transform_points

K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])


def camera_pose() -> np.ndarray:
    """A camera 0.5 m up and 0.6 m in front of the base, looking down at the table (camera -> base)."""
    forward = np.array([-0.6, 0.0, -0.5]) / np.linalg.norm([-0.6, 0.0, -0.5])
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward], axis=1)  # OpenCV: x right, y down, z forward
    T[:3, 3] = [0.7, 0.0, 0.5]
    return T


def test_depth_is_back_projected_exactly_and_background_dropped():
    depth = np.full((64, 64), 1.0, np.float32)
    depth[10, 40] = np.nan  # a bad pixel: skipped, not a crash
    segmentation = np.full((64, 64), 5, np.int32)
    segmentation[:, :16] = 2  # "table": dropped
    segmentation[32, 42] = 7  # one pixel of the cube
    frame = Frame(image=np.zeros((64, 64, 3), np.uint8), intrinsics=K, depth=depth, segmentation=segmentation,
                  segment_names={2: "table-workspace", 5: "panda_link3", 7: "cube"}, T_base_frame=camera_pose(),
                  frame_id="base_camera", step=3)
    harness = NodeHarness(PointCloudNode, {"n_points": 4096})
    cloud = harness.send("frame", frame)[0].message
    assert cloud.frame_id == "base_camera" and cloud.step == 3
    assert len(np.unique(cloud.xyz, axis=0)) == 64 * 48 - 1  # all kept pixels, padded by repetition
    assert np.all(cloud.xyz[:, 0] >= (16 - 32) / 100 - 1e-6)  # nothing from the table columns
    cube = cloud.xyz[cloud.is_target]
    np.testing.assert_allclose(cube[0], [0.1, 0.0, 1.0], atol=1e-6)  # ((42-32)/100, (32-32)/100, 1)
    np.testing.assert_allclose(transform_points(cloud.T_base_frame, cube[:1])[0],
                               camera_pose()[:3, :3] @ [0.1, 0.0, 1.0] + camera_pose()[:3, 3], atol=1e-6)


def cube_points(centre, yaw, half=0.02, n=30) -> np.ndarray:
    """Points on the top and two side faces of a yawed cube standing on the table (base frame)."""
    g = np.linspace(-half, half, n)
    a, b = np.meshgrid(g, g)
    top = np.stack([a.ravel(), b.ravel(), np.full(a.size, half)], 1)
    side_x = np.stack([np.full(a.size, half), a.ravel(), b.ravel()], 1)
    side_y = np.stack([a.ravel(), np.full(a.size, -half), b.ravel()], 1)
    R = quat_to_matrix(np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))
    return np.concatenate([top, side_x, side_y]) @ R.T + centre


def planner_inputs(points_base, goal=(0.05, -0.1, 0.25)):
    T = camera_pose()
    cloud = PointCloud(xyz=transform_points(invert_transform(T), points_base).astype(np.float32),
                       is_target=np.ones(len(points_base), bool), T_base_frame=T, frame_id="base_camera", step=0)
    down = np.array([0.0, 1.0, 0.0, 0.0])  # TCP pointing down (180° about x)
    state = RobotState(qpos=np.zeros(9, np.float32), qvel=np.zeros(9, np.float32),
                       ee_pose=np.array([0.0, 0.0, 0.3, *down], np.float32), goal_pos=np.array(goal, np.float32))
    return cloud, state


@pytest.mark.parametrize("yaw", [0.0, np.radians(30), np.radians(-55)])
def test_grasp_waypoint_is_inside_the_cube_and_aligned_with_its_faces(yaw):
    centre = np.array([0.1, 0.05, 0.02])
    cloud, state = planner_inputs(cube_points(centre, yaw))
    harness = NodeHarness(GeometricPlanner)
    harness.send("state", state)
    plan = harness.send("cloud", cloud)[0].message
    assert plan.valid and plan.names == ["pre_grasp", "grasp", "lift", "goal"]
    poses = np.stack([pose_to_matrix(r[:7]) for r in plan.poses])
    base = np.einsum("ij,kjl->kil", plan.T_base_frame, poses)  # back to the base frame, exactly
    grasp = base[1]
    np.testing.assert_allclose(grasp[:3, 3], centre, atol=2e-3)
    closing = grasp[:3, 1]
    angle = np.degrees(np.arctan2(closing[1], closing[0]) - yaw) % 90
    assert min(angle, 90 - angle) < 1.5  # closes across a pair of faces
    np.testing.assert_allclose(grasp[:3, 2], [0, 0, -1], atol=1e-6)  # top-down
    np.testing.assert_allclose(base[0][:3, 3] - grasp[:3, 3], [0, 0, 0.05], atol=1e-6)
    np.testing.assert_allclose(base[2][:3, 3] - grasp[:3, 3], [0, 0, 0.08], atol=1e-6)
    np.testing.assert_allclose(base[3][:3, 3], [0.05, -0.1, 0.25], atol=1e-6)
    assert list(plan.poses[:, 7]) == [1.0, -1.0, -1.0, -1.0]


def test_a_mask_spilling_onto_a_neighbour_plans_for_the_cube_it_mostly_covers():
    """Target points on the named cube and a few on a cube 8.5 cm away (a learned mask's spill): the grasp is
    at the named cube's centre, and the spilled points are counted."""
    centre, neighbour = np.array([0.1, 0.05, 0.02]), np.array([0.1, -0.035, 0.02])
    spill = cube_points(neighbour, 0.3, n=5)[:20]
    cloud, state = planner_inputs(np.concatenate([cube_points(centre, 0.0), spill]))
    for radius, expect in ((0.025, centre), (None, None)):
        harness = NodeHarness(GeometricPlanner, {"cluster_radius_m": radius})
        harness.send("state", state)
        plan = harness.send("cloud", cloud)[0].message
        grasp = transform_points(plan.T_base_frame, plan.poses[1:2, :3].astype(np.float64))[0]
        if expect is not None:
            np.testing.assert_allclose(grasp, expect, atol=2e-3)
            assert harness.node.counters["target_points_off_cluster"] == len(spill)
        else:  # every point: the footprint spans both cubes
            assert abs(grasp[1] - centre[1]) > 0.01
    two = np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [0.2, 0, 0]], float)
    np.testing.assert_array_equal(largest_cluster(two, 0.015), two[:3])
    assert len(largest_cluster(two[:1], 0.015)) == 1


def test_an_invisible_target_gives_an_invalid_plan_that_says_so():
    cloud, state = planner_inputs(cube_points(np.array([0.1, 0.0, 0.02]), 0.0))
    cloud.is_target = np.zeros(len(cloud.xyz), bool)
    harness = NodeHarness(GeometricPlanner)
    harness.send("state", state)
    plan = harness.send("cloud", cloud)[0].message
    assert not plan.valid and "target not visible" in plan.reason and plan.poses.shape == (0, 8)


def test_footprint_of_a_rectangle():
    rng = np.random.default_rng(0)
    local = rng.uniform([-0.05, -0.02, 0], [0.05, 0.02, 0.04], (500, 3))
    yaw = np.radians(20)
    R = quat_to_matrix(np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))
    centre, axes = footprint(local @ R.T + [0.3, 0.1, 0])
    np.testing.assert_allclose(centre, [0.3, 0.1], atol=3e-3)
    assert abs(abs(axes[0] @ [np.cos(yaw), np.sin(yaw)]) - 1) < 1e-3 or abs(abs(axes[1] @ [np.cos(yaw), np.sin(yaw)]) - 1) < 1e-3
