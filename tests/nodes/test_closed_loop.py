"""The embodied loop closed in ManiSkill, on both executors, with the scripted waypoint follower in
place of the learned expert: what is tested is the loop (robot node, clouds, planner, controller)."""
import pytest

from nodes.evaluate import evaluate

pytestmark = pytest.mark.slow
GRAPH = "tests/configs/pick_cube_follower.yaml"


@pytest.mark.parametrize("executor", ["inproc", "zmq"])
def test_the_loop_picks_the_cube_with_planner_waypoints(executor):
    summary = evaluate(GRAPH, episodes=1, seed=1000, executor=executor, max_seconds=240)
    assert summary["episodes"] == 1 and summary["success_rate"] == 1.0
    counters = summary["counters"]
    assert counters["env"]["actions_executed"] + counters["env"].get("holds_executed", 0) == summary["per_episode"][0]["steps"]
    assert "hold_rejected" not in counters.get("controller", {})  # no command was refused as unsafe
    final = summary["per_episode"][0]  # what explains an episode's end: the task's own evaluation
    assert final["evaluation"]["is_obj_placed"] == 1.0 and final["target_goal_distance_m"] < 0.025
