"""Recording cost: the embodied loop with and without recording its camera, state and cloud streams.

The same graph (configs/pick_cube.yaml), seeds and executor twice: once as it is, once with a `record:`
spec for the loop's heavy streams. Reported side by side: the loop's rate (steps per second of episode
time), the recording's size and sustained write rate (MB per second of episode time), and the ratio of
the rates (recorded / plain; 1.0 = recording costs the loop nothing).

    python benchmarks/recording.py [--quick] [--episodes 5] [--executor inproc|zmq]

A table, then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from nodes.evaluate import evaluate
from streaming.recording import read_info

GRAPH = "configs/pick_cube.yaml"
RECORDED_STREAMS = ["env/frame", "env/state", "cloud/cloud"]
MB = 1e6


def _episode_seconds(summary: dict[str, Any]) -> float:
    return sum(r["seconds"] for r in summary["per_episode"])


def run(graph_file: str, episodes: int, seed: int, executor: str, record_to: Path | None) -> dict[str, Any]:
    """One evaluation; with `record_to`, the graph records RECORDED_STREAMS there."""
    if record_to is None:
        summary = evaluate(graph_file, episodes, seed, executor)
        return {"steps_per_s": summary["steps_per_s"], "success_rate": summary["success_rate"]}
    raw = yaml.safe_load(Path(graph_file).read_text())
    raw["record"] = {"out": str(record_to), "streams": RECORDED_STREAMS}
    recorded_graph = record_to.with_suffix(".yaml")
    recorded_graph.write_text(yaml.safe_dump(raw))
    summary = evaluate(str(recorded_graph), episodes, seed, executor)
    size = record_to.stat().st_size
    info = read_info(record_to)
    return {"steps_per_s": summary["steps_per_s"], "success_rate": summary["success_rate"],
            "bytes": size, "messages": sum(info.counts.values()),
            "mb_per_s": size / MB / _episode_seconds(summary) if summary["per_episode"] else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 episodes each (about a minute)")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--executor", choices=("inproc", "zmq"), default="inproc")
    args = parser.parse_args(argv)
    episodes = 2 if args.quick else args.episodes

    with tempfile.TemporaryDirectory(prefix="groundloop-recording-") as tmp:
        plain = run(GRAPH, episodes, args.seed, args.executor, None)
        recorded = run(GRAPH, episodes, args.seed, args.executor, Path(tmp) / "loop.mcap")
    ratio = recorded["steps_per_s"] / plain["steps_per_s"] if plain["steps_per_s"] else None

    print(f"\n{GRAPH}, {episodes} episodes from seed {args.seed}, {args.executor}; recorded: {', '.join(RECORDED_STREAMS)}")
    print(f"{'run':<12}{'steps/s':>10}{'success':>10}{'MB written':>12}{'MB/s':>8}")
    print(f"{'plain':<12}{plain['steps_per_s']:>10.2f}{plain['success_rate']:>10.2f}{'—':>12}{'—':>8}")
    print(f"{'recording':<12}{recorded['steps_per_s']:>10.2f}{recorded['success_rate']:>10.2f}"
          f"{recorded['bytes'] / MB:>12.1f}{recorded['mb_per_s']:>8.2f}")
    print(f"loop rate with / without recording: {ratio:.3f}" if ratio else "loop rate: no steps")
    print(json.dumps({"benchmark": "recording", "quick": args.quick, "episodes": episodes, "seed": args.seed,
                      "executor": args.executor, "streams": RECORDED_STREAMS, "plain": plain, "recording": recorded,
                      "rate_ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
