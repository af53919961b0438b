"""Closed-loop evaluation of the motion-planning oracle: the ceiling a learned policy is compared to.

Runs the same expert that generates the demos (mplib plans tracked with ee-delta actions), without
cameras, so it measures planning and control only.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

from sim.demos import MotionPlanningExpert
from sim.maniskill_robot import DEFAULT_MAX_EPISODE_STEPS, ManiSkillRobot


def evaluate_oracle(task: str, seeds: Iterable[int], max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> dict[str, Any]:
    """Success rate of the mplib expert on `seeds`: {task, n, success_rate, mean_length, statuses, per_seed}."""
    robot = ManiSkillRobot(task, max_episode_steps=max_episode_steps, camera=None)
    robot.connect()
    try:
        expert = MotionPlanningExpert(robot)
        results = [expert.run(int(seed)) for seed in seeds]
    finally:
        robot.disconnect()
    if not results:
        raise ValueError(f"evaluate_oracle({task!r}): no seeds given")
    successes = [r for r in results if r.success]
    return {
        "task": task,
        "n": len(results),
        "success_rate": len(successes) / len(results),
        "mean_length": float(np.mean([r.n_steps for r in successes])) if successes else None,
        "statuses": dict(Counter(r.status for r in results)),
        "per_seed": [{"seed": r.seed, "status": r.status, "length": r.n_steps} for r in results],
    }
