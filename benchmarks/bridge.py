"""The robot bridge's cost: the embodied loop driving ManiSkill across the bridge against the same loop
with the simulator in-process, on the same seeds.

- in-process: configs/pick_cube.yaml, the robot node owns the ManiSkill env;
- bridge: configs/pick_cube_bridge.yaml, the robot node is a `BridgeRobot` talking tcp with CURVE to
  `groundloop sim serve-robot` in another process (fresh keys, loopback).
Both run the shipped guided expert on the inproc executor, so they differ only in where the robot is.
Per step, the robot node's command handler is one command in -> simulator step -> observation out
(camera included): in-process that is the simulator alone, over the bridge the whole round trip. The
server's own per-step time (its stats) splits the round trip into the simulator and the bridge's cost.

    python benchmarks/bridge.py [--quick] [--episodes 20] [--seed 1000]

A table with ratios (bridge / in-process), then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from nodes.evaluate import evaluate

LOCAL_GRAPH, BRIDGE_GRAPH = "configs/pick_cube.yaml", "configs/pick_cube_bridge.yaml"
GUIDED = "models/action_expert_pickcube.pt"
TRAIN_COMMAND = f"groundloop train action-expert --data data/demos/PickCube-v1 --out {GUIDED}"
ROBOT_NODE, COMMAND_PORT = "env", "command"
EPISODE_STEPS = 150  # the graphs' max_episode_steps; the server's env gets the same step limit
QUICK_EPISODES = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step_latency(summary: dict[str, Any]) -> dict[str, float]:
    """The robot node's command handler (one step, observation included) p50/p95 in ms."""
    by_node = {m["node"]: m["latency_ms_by_port"] for m in summary["metrics"]}
    return by_node[ROBOT_NODE][COMMAND_PORT]


def loop_figures(summary: dict[str, Any]) -> dict[str, Any]:
    return {"success_rate": summary["success_rate"], "successes": summary["successes"], "episodes": summary["episodes"],
            "mean_episode_length": summary["mean_episode_length"], "steps_per_s": summary["steps_per_s"],
            "step_ms": step_latency(summary),
            "per_episode": [{k: r[k] for k in ("seed", "success", "steps")} for r in summary["per_episode"]]}


def run_bridge(episodes: int, seed: int, executor: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bridged loop against a fresh server process; its figures and the server's stats."""
    from robot.bridge import BridgeRobot
    from sim.bridge_server import start_server_process
    from streaming.security import generate_keys

    with tempfile.TemporaryDirectory(prefix="groundloop-bridge-bench-") as tmp:
        keys = generate_keys(Path(tmp) / "keys")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        server = start_server_process(endpoint, keys, "--max-episode-steps", str(EPISODE_STEPS))
        try:
            overrides = [f"{ROBOT_NODE}.endpoint={endpoint}", f"{ROBOT_NODE}.keys_dir={keys}"]
            summary = evaluate(BRIDGE_GRAPH, episodes, seed, executor, overrides)
            monitor = BridgeRobot(endpoint, keys_dir=keys)
            monitor.connect()
            stats = monitor.server_stats()
            monitor.disconnect()
        finally:
            server.terminate()
            server.wait()
    return loop_figures(summary), stats


def _ratio(ours: float | None, base: float | None) -> float | None:
    return ours / base if ours is not None and base else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPISODES} episodes each (about a minute each)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000, help="first held-out seed (demos use 0..199)")
    parser.add_argument("--executor", choices=("inproc", "zmq"), default="inproc")
    args = parser.parse_args(argv)
    episodes = QUICK_EPISODES if args.quick else args.episodes
    if not Path(GUIDED).exists():
        print(f"{GUIDED}: missing; make it with `{TRAIN_COMMAND}`")
        print(json.dumps({"benchmark": "bridge", "error": f"{GUIDED} missing"}))
        return 1
    started = time.monotonic()

    print(f"PickCube-v1, {episodes} episodes from seed {args.seed}, {args.executor} executor: in-process, then bridge")
    local = loop_figures(evaluate(LOCAL_GRAPH, episodes, args.seed, args.executor))
    bridge, server = run_bridge(episodes, args.seed, args.executor)
    server_step = server["step_ms"]
    overhead = ({q: bridge["step_ms"][q] - server_step[q] for q in ("p50", "p95")}
                if server_step["p50"] is not None else None)
    same = sum(a == b for a, b in zip(local["per_episode"], bridge["per_episode"]))

    rows = [("success rate", "success_rate", "{:.2f}"), ("mean episode length", "mean_episode_length", "{:.1f}"),
            ("steps/s", "steps_per_s", "{:.2f}")]
    print(f"\n{'':<34}{'in-process':>12}{'bridge':>12}{'ratio':>9}")
    for label, key, fmt in rows:
        ratio = _ratio(bridge[key], local[key])
        print(f"{label:<34}{fmt.format(local[key]):>12}{fmt.format(bridge[key]):>12}"
              f"{'—' if ratio is None else f'{ratio:.3f}':>9}")
    for q in ("p50", "p95"):
        ratio = _ratio(bridge["step_ms"][q], local["step_ms"][q])
        print(f"{f'step {q} ms (robot node)':<34}{local['step_ms'][q]:>12.1f}{bridge['step_ms'][q]:>12.1f}"
              f"{'—' if ratio is None else f'{ratio:.3f}':>9}")
    if overhead:
        print(f"\nover the bridge, a step's round trip p50 {bridge['step_ms']['p50']:.1f} ms = server step "
              f"{server_step['p50']:.1f} ms + bridge {overhead['p50']:.1f} ms (p95: {server_step['p95']:.1f} + "
              f"{overhead['p95']:.1f})")
    print(f"same outcome (success, length) on {same}/{episodes} seeds; server: {server['commands']} commands, "
          f"{server['rejected']} rejected, {server['watchdog_holds']} watchdog holds, {server['clients_lost']} clients "
          f"lost, {server['auth_failures']} authentication failures")
    report = {
        "benchmark": "bridge", "quick": args.quick, "episodes": episodes, "seed": args.seed, "executor": args.executor,
        "transport": "tcp+curve", "in_process": local, "bridge": bridge,
        "ratio_bridge_over_in_process": {
            "success_rate": _ratio(bridge["success_rate"], local["success_rate"]),
            "steps_per_s": _ratio(bridge["steps_per_s"], local["steps_per_s"]),
            "step_ms_p50": _ratio(bridge["step_ms"]["p50"], local["step_ms"]["p50"]),
            "step_ms_p95": _ratio(bridge["step_ms"]["p95"], local["step_ms"]["p95"])},
        "bridge_round_trip_ms": bridge["step_ms"], "server_step_ms": server_step, "bridge_overhead_ms": overhead,
        "same_outcome_seeds": same, "server_stats": server, "elapsed_s": time.monotonic() - started,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
