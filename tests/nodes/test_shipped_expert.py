"""The shipped default expert, closed loop in ManiSkill on seeds training never saw: the product's main
job works out of the box. Few short episodes: a smoke test of the model, not its benchmark
(benchmarks/embodied.py measures the success rate)."""
import pytest

from nodes.evaluate import evaluate

pytestmark = pytest.mark.slow


def test_the_shipped_expert_picks_the_cube_without_safety_violations():
    summary = evaluate("configs/pick_cube.yaml", episodes=3, seed=1000, executor="inproc",
                       overrides=["expert.num_threads=1"], max_seconds=170)
    assert summary["episodes"] == 3
    assert summary["successes"] >= 1
    counters = summary["counters"]
    steps = sum(r["steps"] for r in summary["per_episode"])
    assert counters["env"]["actions_executed"] + counters["env"].get("holds_executed", 0) == steps  # a command every step
    controller = counters.get("controller", {})
    assert not any(key.startswith("hold_rejected") for key in controller)  # no action refused as unsafe
    assert counters.get("expert", {}).get("rejected_observations", 0) == 0
