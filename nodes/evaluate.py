"""`groundloop eval GRAPH` and `groundloop demo`: run an embodied graph for a number of episodes and
report what happened — success rate, episode lengths, per-node latency — as a table and a JSON line.

The graph's robot node (the one node of kind `RobotNode`) is told the episodes and seeds; everything
else runs as the graph file says, on any executor.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.executors import EXECUTORS, INPROC, ZMQ, make_executor
from pipeline.graph import Graph, GraphError, load_graph
from pipeline.metrics import format_table
from nodes.robot_io import RobotNode

DEMO_GRAPH = "configs/pick_cube.yaml"
DEMO_EPISODES = 3
DEMO_SEED = 1000  # seeds the shipped expert never saw in training
DEMO_VIDEO = "outputs/demo_episode.mp4"


def robot_node_id(graph: Graph) -> str:
    ids = [n for n, spec in graph.nodes.items() if issubclass(spec.cls, RobotNode)]
    if len(ids) != 1:
        raise GraphError(graph.file, None, "nodes", f"eval needs exactly one RobotNode, found {len(ids)}")
    return ids[0]


def evaluate(graph_file: str, episodes: int, seed: int, executor: str = "inproc", overrides: list[str] | None = None,
             video_path: str | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """Run the graph for `episodes` episodes from `seed`; the summary (results and metrics)."""
    graph = load_graph(graph_file, overrides)
    env = robot_node_id(graph)
    with tempfile.TemporaryDirectory(prefix="groundloop-eval-") as tmp:
        results_path = Path(tmp) / "episodes.jsonl"
        settings = [f"{env}.episodes={episodes}", f"{env}.seed={seed}", f"{env}.results_path={results_path}"]
        if video_path:
            settings.append(f"{env}.video_path={video_path}")
        graph = load_graph(graph_file, (overrides or []) + settings)
        runner = make_executor(graph, executor)
        started = time.monotonic()
        metrics = runner.run(max_seconds=max_seconds)
        wall = time.monotonic() - started
        results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    return summarize(results, metrics, wall, graph.name, executor, episodes, seed)


def summarize(results: list[dict], metrics: list[dict], wall_s: float, graph: str, executor: str,
              episodes: int, seed: int) -> dict[str, Any]:
    lengths = [r["steps"] for r in results]
    successes = [r["success"] for r in results]
    steps = sum(lengths)
    episode_s = sum(r["seconds"] for r in results)
    return {
        "graph": graph, "executor": executor, "episodes_requested": episodes, "episodes": len(results),
        "seed": seed, "success_rate": float(np.mean(successes)) if results else 0.0,
        "successes": int(sum(successes)), "mean_episode_length": float(np.mean(lengths)) if lengths else 0.0,
        # the loop's rate while episodes run: start-up (process spawn, model loading) is not a step's cost
        "wall_s": wall_s, "steps_per_s": steps / episode_s if episode_s > 0 else 0.0,
        "latency_ms": {m["node"]: {"p50": m["latency_ms_p50"], "p95": m["latency_ms_p95"]} for m in metrics},
        "counters": {m["node"]: m["counters"] for m in metrics if m["counters"]},
        "per_episode": results,
        "metrics": metrics,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print(format_table(summary["metrics"]))
    print()
    for result in summary["per_episode"]:
        print(f"episode {result['episode']:>3}  seed {result['seed']:>5}  {'success' if result['success'] else 'failure':<8}"
              f"{result['steps']:>4} steps  {result['seconds']:.1f} s")
    print(f"\nsuccess rate {summary['success_rate']:.2f} ({summary['successes']}/{summary['episodes']}), "
          f"mean episode length {summary['mean_episode_length']:.1f} steps, {summary['steps_per_s']:.1f} steps/s")
    compact = {k: v for k, v in summary.items() if k not in ("metrics",)}
    print(json.dumps(compact))


def _eval(args: argparse.Namespace) -> int:
    summary = evaluate(args.graph, args.episodes, args.seed, args.executor, args.set, args.video, args.max_seconds)
    print_summary(summary)
    return 0


def _demo(args: argparse.Namespace) -> int:
    summary = evaluate(DEMO_GRAPH, args.episodes, DEMO_SEED, args.executor, video_path=DEMO_VIDEO)
    print_summary(summary)
    print(f"video of episode 0: {DEMO_VIDEO}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    evaluation = commands.add_parser("eval", help="run an embodied graph for N episodes and report success and latency")
    evaluation.add_argument("graph")
    evaluation.add_argument("--episodes", type=int, default=50)
    evaluation.add_argument("--seed", type=int, default=1000)
    evaluation.add_argument("--executor", choices=EXECUTORS, default=INPROC)
    evaluation.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    evaluation.add_argument("--video", default=None, help="write episode 0 to this MP4")
    evaluation.add_argument("--max-seconds", type=float, default=None)
    evaluation.set_defaults(func=_eval)

    demo = commands.add_parser("demo", help=f"the main job: {DEMO_GRAPH} for a few episodes with the shipped models")
    demo.add_argument("--episodes", type=int, default=DEMO_EPISODES)
    demo.add_argument("--executor", choices=EXECUTORS, default=ZMQ)
    demo.set_defaults(func=_demo)
