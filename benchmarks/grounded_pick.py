"""Grounded picking: success with distractor cubes using our grounders' masks vs the simulator's segmentation.

GroundedPickCube-v1 (three cubes of different colours, the instruction names one) run through
configs/grounded_pick.yaml on the same seeds for every grounder, side by side:
- each grounder in --grounders (default `color`, the HSV-threshold baseline; `uground`, the learned one; any
  registered in nodes.grounding.GROUNDERS);
- oracle: the simulator's segmentation of the named cube — the ceiling, so the ratio is ours / oracle.
Then the grounding alone, on the first frame of each seed: IoU of the mask with the oracle's for the
named cube, how often the mask touches a distractor, and how often a palette colour that is not in the
scene is reported absent.

    python benchmarks/grounded_pick.py [--quick] [--episodes 20] [--seed 1000] [--grounders color,uground]

A table, then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from nodes.evaluate import evaluate
from nodes.grounding import COLOR, ORACLE, make_grounder
from pipeline.graph import load_graph
from pipeline.messages import Frame

GRAPH = "configs/grounded_pick.yaml"
GROUNDING_NODE = "grounding"
QUICK_EPISODES = 3
QUICK_GROUNDING_SEEDS = 10
GROUNDING_SEEDS = 50


def run_loop(grounder: str, episodes: int, seed: int, executor: str) -> dict[str, Any]:
    """The closed loop with `grounder` choosing the target's points."""
    return evaluate(GRAPH, episodes, seed, executor, [f"{GROUNDING_NODE}.grounder={grounder}"])


def graph_grounder_options() -> dict[str, dict[str, Any]]:
    """The grounding node's per-grounder options in the graph file, so the frames here are grounded as the
    loop grounds them."""
    return dict(load_graph(GRAPH).nodes[GROUNDING_NODE].params.options)


def grounding_quality(grounders: list[str], seeds: range) -> dict[str, dict[str, float]]:
    """Per grounder: mean IoU with the oracle's mask of the named cube, the share of masks that touch a
    distractor, and the share of absent palette colours reported absent (first frame of each seed)."""
    from sim.grounded_pick import cube_actor_name
    from sim.maniskill_robot import ManiSkillRobot
    from sim.tasks import GROUNDED_PICK_CUBE

    robot = ManiSkillRobot(GROUNDED_PICK_CUBE)
    robot.connect()
    options = graph_grounder_options()
    oracle = make_grounder(ORACLE, options.get(ORACLE))
    built = {name: make_grounder(name, options.get(name)) for name in grounders}
    figures: dict[str, dict[str, list[float]]] = {name: {"iou": [], "touches_distractor": [], "absent_ok": []}
                                                  for name in grounders}
    try:
        for seed in seeds:
            obs = robot.reset(seed=seed)
            cam = obs.cameras[robot.camera.name]
            frame = Frame(image=cam.rgb, segmentation=cam.segmentation, segment_names=cam.segmentation_labels)
            env = robot.env
            truth = oracle.ground(frame, env.instruction).mask
            distractors = np.isin(cam.segmentation, robot.segmentation_ids(
                [cube_actor_name(c) for c in env.scene_colours if c != env.target_colour]))
            absent = [f"pick the {c} cube" for c in env.cubes if c not in env.scene_colours]
            for name, grounder in built.items():
                mask = grounder.ground(frame, env.instruction).mask
                union = (mask | truth).sum()
                figures[name]["iou"].append(float((mask & truth).sum() / union) if union else 0.0)
                figures[name]["touches_distractor"].append(float((mask & distractors).any()))
                figures[name]["absent_ok"].extend(float(not grounder.ground(frame, text).found) for text in absent)
    finally:
        robot.disconnect()
    return {name: {"mean_iou": float(np.mean(f["iou"])), "touches_distractor": float(np.mean(f["touches_distractor"])),
                   "absent_detected": float(np.mean(f["absent_ok"])), "frames": len(f["iou"])}
            for name, f in figures.items()}


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of an eval summary: rates and, per episode, the outcome and why."""
    return {"success_rate": summary["success_rate"], "successes": summary["successes"], "episodes": summary["episodes"],
            "mean_episode_length": summary["mean_episode_length"], "steps_per_s": summary["steps_per_s"],
            "counters": summary["counters"],
            "per_episode": [{k: e[k] for k in ("seed", "success", "steps", "evaluation", "target_goal_distance_m") if k in e}
                            for e in summary["per_episode"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPISODES} episodes per grounder (1–3 minutes)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000, help="first seed; every grounder gets the same ones")
    parser.add_argument("--grounders", default=COLOR, help="comma-separated grounders measured against the oracle "
                                                          "(color, uground)")
    parser.add_argument("--executor", choices=("inproc", "zmq"), default="inproc")
    args = parser.parse_args(argv)
    episodes = QUICK_EPISODES if args.quick else args.episodes
    grounders = [g for g in args.grounders.split(",") if g and g != ORACLE]
    started = time.monotonic()

    print(f"GroundedPickCube-v1 ({GRAPH}), {episodes} episodes from seed {args.seed}")
    loops = {name: _brief(run_loop(name, episodes, args.seed, args.executor)) for name in [*grounders, ORACLE]}
    n_frames = QUICK_GROUNDING_SEEDS if args.quick else GROUNDING_SEEDS
    quality = grounding_quality([*grounders, ORACLE], range(args.seed, args.seed + n_frames))

    oracle_rate = loops[ORACLE]["success_rate"]
    ratios = {name: loops[name]["success_rate"] / oracle_rate if oracle_rate else None for name in grounders}
    print(f"\n{'grounder':<12}{'success':>14}{'ours/oracle':>13}{'mask IoU':>10}{'on distractor':>15}{'absent found':>14}")
    for name, loop in loops.items():
        q, ratio = quality[name], ratios.get(name)
        rate = f"{loop['success_rate']:.2f} ({loop['successes']}/{loop['episodes']})"
        print(f"{name:<12}{rate:>14}{'—' if ratio is None else f'{ratio:.2f}':>13}{q['mean_iou']:>10.2f}"
              f"{q['touches_distractor']:>15.2f}{q['absent_detected']:>14.2f}")
    print(f"grounding figures over the first frame of {n_frames} seeds; wall {time.monotonic() - started:.0f} s")

    print(json.dumps({"benchmark": "grounded_pick", "graph": GRAPH, "episodes": episodes, "seed": args.seed,
                      "executor": args.executor, "quick": args.quick,
                      "success_rate": {name: loop["success_rate"] for name, loop in loops.items()},
                      "ratio_to_oracle": ratios, "grounding": quality, "loops": loops,
                      "wall_s": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
