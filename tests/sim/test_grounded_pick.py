"""GroundedPickCube-v1 against the simulator's ground truth: the scene the instruction talks about, the
segmentation that tells the cubes apart, and grounding (oracle and colour) that selects the target's points."""
from __future__ import annotations


import numpy as np
import pytest

from nodes.evaluate import evaluate
from nodes.grounding import COLOR, ORACLE, UGROUND, TargetGrounding, make_grounder
from nodes.pointcloud import PointCloudNode
from pipeline.harness import NodeHarness
from pipeline.messages import Frame
from robot.interface import RobotObservation
from sim.maniskill_robot import ManiSkillRobot

SEEDS = (0, 1, 2, 3)
UGROUND_SEEDS = (1000, 1001, 1002, 1003, 1004)  # past the grounded stills' seeds (train 0–873, held out 4–999)
#: the shipped model on seeds 1000–1009 (measured): IoU with the truth 0.67 on average, 11 % of its mask's pixels
#: on other cubes; the planner keeps the largest cluster of the flagged points, so a spill does not move the grasp
UGROUND_MIN_MEAN_IOU = 0.5
UGROUND_MAX_ON_DISTRACTORS = 0.25
GRAPH = "configs/grounded_pick.yaml"


@pytest.fixture(scope="module")
def robot(grounded_robot: ManiSkillRobot) -> ManiSkillRobot:
    return grounded_robot


def frame_of(robot: ManiSkillRobot, obs: RobotObservation) -> Frame:
    cam = obs.cameras[robot.camera.name]
    return Frame(image=cam.rgb, intrinsics=cam.intrinsics, depth=cam.depth, segmentation=cam.segmentation,
                 segment_names=cam.segmentation_labels, T_base_frame=cam.T_base_camera, frame_id=robot.camera.name)


def test_layouts_keep_cubes_apart_and_the_goal_clear_of_distractors():
    from sim.grounded_pick import MIN_CUBE_SPACING_M, MIN_GOAL_CLEARANCE_M, PALETTE, sample_goal, sample_layout

    rng = np.random.RandomState(0)
    for _ in range(200):
        colours, xy, yaws = sample_layout(rng, 3, 0.1)
        assert len(set(colours)) == 3 and set(colours) <= set(PALETTE) and yaws.shape == (3,)
        assert min(np.linalg.norm(xy[i] - xy[j]) for i in range(3) for j in range(i)) >= MIN_CUBE_SPACING_M
        goal = sample_goal(rng, xy[1:], 0.1, 0.02, 0.3)
        assert np.linalg.norm(xy[1:] - goal[:2], axis=1).min() >= MIN_GOAL_CLEARANCE_M and 0.02 <= goal[2] <= 0.32
    with pytest.raises(ValueError, match="num_cubes"):
        sample_layout(rng, len(PALETTE) + 1, 0.1)


def test_the_graphs_uground_grounds_in_the_view_its_stills_were_cut_from():
    from pipeline.graph import load_graph
    from sim.grounded_pick import WORKSPACE_CROP
    from sim.grounded_stills import DEFAULT_SIZE

    options = load_graph(GRAPH).nodes["grounding"].params.options[UGROUND]
    assert tuple(options["crop"]) == WORKSPACE_CROP and options["image_size"] == DEFAULT_SIZE


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_the_instruction_names_a_present_cube_and_segments_tell_the_cubes_apart(robot, seed):
    from sim.grounded_pick import colour_of_actor, cube_actor_name, instruction_for

    obs = robot.reset(seed=seed)
    env = robot.env
    assert obs.extras["instruction"] == instruction_for(env.target_colour) and env.target_colour in env.scene_colours
    np.testing.assert_allclose(obs.extras["target_pose"][:3], robot.to_base(env.cubes[env.target_colour].pose.p[0].numpy()),
                               atol=1e-5)  # the task's target is the instructed cube
    cam = obs.cameras[robot.camera.name]
    visible = {colour_of_actor(cam.segmentation_labels[i]) for i in np.unique(cam.segmentation)} - {None}
    assert visible == set(env.scene_colours)  # the scene's cubes, each its own segment; parked cubes out of view
    for colour in env.scene_colours:
        assert np.isin(cam.segmentation, robot.segmentation_ids([cube_actor_name(colour)])).sum() > 150
    again = robot.reset(seed=seed)
    assert again.extras["instruction"] == obs.extras["instruction"]
    np.testing.assert_allclose(again.extras["target_pose"], obs.extras["target_pose"], atol=1e-6)


@pytest.mark.slow
def test_oracle_grounding_selects_the_targets_points(robot):
    obs = robot.reset(seed=5)
    frame = frame_of(robot, obs)
    mask = NodeHarness(TargetGrounding, {"grounder": ORACLE, "instruction": obs.extras["instruction"]}).send("frame", frame)[0].message
    cloud_node = NodeHarness(PointCloudNode, {"n_points": 1024, "target_from": "mask"})
    cloud_node.send("frame", frame)
    cloud = cloud_node.send("mask", mask)[0].message
    target = cloud.xyz[cloud.is_target] @ cloud.T_base_frame[:3, :3].T + cloud.T_base_frame[:3, 3]
    assert len(target) >= 8  # enough for the planner
    centre = obs.extras["target_pose"][:3]
    assert np.abs(target - centre).max() < 0.035  # every flagged point lies on the target cube (half-diagonal 2.8 cm)
    distractors = [c for c in robot.env.scene_colours if c != robot.env.target_colour]
    for colour in distractors:
        other = robot.to_base(robot.env.cubes[colour].pose.p[0].numpy())
        assert np.linalg.norm(target - other, axis=1).min() > 0.04


@pytest.mark.slow
def test_the_colour_baseline_agrees_with_the_oracle_on_rendered_frames(robot):
    oracle, colour = make_grounder(ORACLE), make_grounder(COLOR)
    for seed in SEEDS:
        robot.reset(seed=seed)
        frame = frame_of(robot, robot.get_observation())
        for present in robot.env.scene_colours:
            truth, found = oracle.ground(frame, f"pick the {present} cube"), colour.ground(frame, f"pick the {present} cube")
            iou = (truth.mask & found.mask).sum() / (truth.mask | found.mask).sum()
            assert found.found and iou > 0.9, (seed, present, iou)
        for absent in sorted(set(robot.env.cubes) - set(robot.env.scene_colours)):
            assert not colour.ground(frame, f"pick the {absent} cube").found, (seed, absent)


@pytest.mark.slow
def test_the_shipped_uground_finds_the_named_cube_on_rendered_frames(robot):
    """The graph's UGround (crop, mode) against the simulator's segmentation, on seeds it never trained on:
    the named cube's mask overlaps the truth and stays off the other cubes."""
    from pipeline.graph import load_graph

    uground = make_grounder(UGROUND, load_graph(GRAPH).nodes["grounding"].params.options[UGROUND])
    oracle = make_grounder(ORACLE)
    ious, on_distractors = [], []
    for seed in UGROUND_SEEDS:
        robot.reset(seed=seed)
        frame = frame_of(robot, robot.get_observation())
        truths = {c: oracle.ground(frame, f"pick the {c} cube").mask for c in robot.env.scene_colours}
        for present, truth in truths.items():
            found = uground.ground(frame, f"pick the {present} cube")
            assert found.found, (seed, present, found.reason)
            ious.append((truth & found.mask).sum() / (truth | found.mask).sum())
            others = np.any([mask for c, mask in truths.items() if c != present], axis=0)
            on_distractors.append((found.mask & others).sum() / found.mask.sum())
    assert np.mean(ious) > UGROUND_MIN_MEAN_IOU, ious
    assert np.mean(on_distractors) < UGROUND_MAX_ON_DISTRACTORS, on_distractors


@pytest.mark.slow
@pytest.mark.parametrize("grounder", [ORACLE, COLOR])
def test_the_loop_holds_still_when_the_instruction_names_an_absent_cube(robot, grounder, caplog):
    seed, steps = 1000, 6
    robot.reset(seed=seed)
    absent = sorted(set(robot.env.cubes) - set(robot.env.scene_colours))[0]
    summary = evaluate(GRAPH, episodes=1, seed=seed, overrides=[
        f"env.max_episode_steps={steps}", f"grounding.grounder={grounder}", f"grounding.instruction=pick the {absent} cube"])
    counters = summary["counters"]
    assert summary["per_episode"][0]["steps"] == steps and not summary["per_episode"][0]["success"]
    assert counters["env"]["holds_executed"] == steps and "actions_executed" not in counters["env"]
    # at once, with the planner's reason (the first step's watchdog may fire first while the loop warms up)
    assert set(counters["controller"]) <= {"hold_no_plan", "hold_watchdog"} and counters["controller"]["hold_no_plan"] >= steps - 1
    assert counters["planner"]["invalid_plans"] >= 1 and counters["grounding"]["absent"] >= 1
    said = [r.getMessage() for r in caplog.records if r.name == "groundloop.node.planner"]
    assert said and all("no plan: grounding: absent" in m and absent in m for m in said)
