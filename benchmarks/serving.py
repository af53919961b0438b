"""CLIP prescan through Ray Serve against the same model called in-process: frames/s at batch 1, 8 and
32, the handle's per-call overhead, and the ratios side by side.

Same model (--clip, torch), same frames (decoded from a held-out shapes-world video), same threads:
- in-process: `load_embedder(...).embed_images` on chunks of b frames, back to back;
- Serve, one at a time: a `ServedClip` over a one-replica deployment, each chunk of b frames a request
  answered before the next is sent (a lone caller, like the prescan's `frame` input);
- Serve, pipelined: the same requests with `max_in_flight` outstanding (how the prescan node sends a
  video); `@serve.batch` merges them into passes of up to --max-batch frames.
The replica reserves every core Ray offers and runs as many model threads as the in-process model,
but on one machine the caller and the replica share the cores: on the 2-core development VM the
caller's serialisation competes with the model. Per-call overhead: a no-op handle call (`info`)
p50/p99, and one-frame latency through Serve and in-process. Each throughput is the best of
--repeats runs; the modes take turns, so a passing load on a shared machine hits them alike.
Target (issue 5): batched Serve throughput >= 0.8 x in-process at batch 32.

    python benchmarks/serving.py [--quick] [--clip DIR] [--threads N] [--device cpu|cuda]

A table, then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the sibling benchmarks must import
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.clip_prescan import decoded_frames  # noqa: E402
from benchmarks.frame_selection import (DEFAULT_CLIP, DEFAULT_DATA, EXIT_MISSING_MODEL,  # noqa: E402
                                        heldout_videos, missing_model)
from nodes.serving.config import (DEFAULT_BATCH_WAIT_S, LOOPBACK, ActorResources, DeploymentSpec,  # noqa: E402
                                  ModelsConfig, ServeRef)

DEPLOYMENT = "clip_bench"
BATCHES = (1, 8, 32)
DEFAULT_FRAMES, QUICK_FRAMES = 256, 64
DEFAULT_REPEATS, QUICK_REPEATS = 3, 2
DEFAULT_CALLS, QUICK_CALLS = 300, 100  # latency samples
VIDEO_SECONDS = 10.0
MAX_BATCH = 32
IN_FLIGHT = 4
WARMUP_CALLS = 3
TARGET_RATIO = 0.8
TARGET_BATCH = 32
PERCENTILES = (50, 99)
MS = 1e3
MODES = ("inprocess", "serve_one_at_a_time", "serve_pipelined")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def frames_for(video: str, count: int) -> np.ndarray:
    """`count` decoded frames (the video's, repeated when it has fewer)."""
    frames = decoded_frames(video, None, MAX_BATCH)
    return frames[np.arange(count) % len(frames)]


def rate(run: Callable[[], int]) -> float:
    """Frames/s of one run of `run` (which returns the frames it embedded)."""
    started = time.perf_counter()
    frames = run()
    return frames / (time.perf_counter() - started)


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(samples, q) * MS) for q in PERCENTILES}


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def chunks(frames: np.ndarray, batch: int) -> list[np.ndarray]:
    return [frames[i:i + batch] for i in range(0, len(frames), batch)]


def embed_sequentially(embed: Callable[[np.ndarray], np.ndarray], frames: np.ndarray, batch: int) -> int:
    for chunk in chunks(frames, batch):
        embed(chunk)
    return len(frames)


def embed_pipelined(served: Any, frames: np.ndarray, batch: int) -> int:
    pending = [served.submit_images(chunk) for chunk in chunks(frames, batch)]  # waits when IN_FLIGHT are out
    for p in pending:
        p.result()
    return len(frames)


def measure(args: argparse.Namespace, frames: np.ndarray, threads: int, repeats: int, calls: int) -> dict[str, Any]:
    """Every figure: throughput per mode and batch size, and the latency of small calls. The modes
    take turns, run after run and call after call, so a load that comes and goes on a shared machine
    falls on all of them alike."""
    import torch

    from nodes.clip.embedder import load_embedder
    from nodes.serving.cli import deploy, shutdown, start_local
    from nodes.serving.client import ServedClip

    gpus = 1 if args.device == "cuda" else 0
    spec = DeploymentSpec(name=DEPLOYMENT, kind="clip", checkpoint=args.clip, device=args.device, num_threads=threads,
                          ray_actor_options=ActorResources(num_cpus=threads, num_gpus=gpus), max_batch_size=MAX_BATCH,
                          batch_wait_timeout_s=args.batch_wait)
    config = ModelsConfig(num_cpus=threads, num_gpus=gpus, http_port=free_port(), deployments=[spec])
    started = time.perf_counter()
    start_local(config)
    try:
        deploy(config.deployments)
        figures: dict[str, Any] = {"serve_start_s": time.perf_counter() - started}
        torch.set_num_threads(threads)
        local = load_embedder(args.clip, device=args.device, num_threads=threads)
        served = ServedClip(ServeRef(serve=DEPLOYMENT, max_in_flight=IN_FLIGHT))
        runs = {"inprocess": lambda b: embed_sequentially(local.embed_images, frames, b),
                "serve_one_at_a_time": lambda b: embed_sequentially(served.embed_images, frames, b),
                "serve_pipelined": lambda b: embed_pipelined(served, frames, b)}
        for b in BATCHES:  # warm-up: first-call allocations on both sides
            embed_sequentially(local.embed_images, frames[:b], b)
            embed_sequentially(served.embed_images, frames[:b], b)
        best = {mode: {b: 0.0 for b in BATCHES} for mode in MODES}
        for _ in range(repeats):
            for b in BATCHES:
                for mode in MODES:
                    best[mode][b] = max(best[mode][b], rate(lambda: runs[mode](b)))
        figures.update(best)
        one = frames[:1]
        info = served.client.handle.info
        small_calls = {"inprocess": lambda: local.embed_images(one), "serve": lambda: served.embed_images(one),
                       "noop": lambda: info.remote().result()}
        samples: dict[str, list[float]] = {name: [] for name in small_calls}
        for i in range(WARMUP_CALLS + calls):
            for name, call in small_calls.items():
                elapsed = timed(call)
                if i >= WARMUP_CALLS:
                    samples[name].append(elapsed)
    finally:
        shutdown(owned=True, remove=[])
    figures["embed1_ms"] = {name: percentiles_ms(samples[name]) for name in ("inprocess", "serve")}
    figures["noop_handle_ms"] = percentiles_ms(samples["noop"])
    figures["per_call_overhead_ms"] = {p: figures["embed1_ms"]["serve"][p] - figures["embed1_ms"]["inprocess"][p]
                                       for p in figures["noop_handle_ms"]}
    for mode in MODES[1:]:
        figures[f"ratio_{mode}"] = {b: figures[mode][b] / figures["inprocess"][b] for b in BATCHES}
    one_ratio, piped = figures["ratio_serve_one_at_a_time"][TARGET_BATCH], figures["ratio_serve_pipelined"][TARGET_BATCH]
    figures["target_met"] = bool(max(one_ratio, piped) >= TARGET_RATIO)
    return figures


def print_table(f: dict[str, Any]) -> None:
    print(f"\n{'frames/s':<26}" + "".join(f"{'batch ' + str(b):>12}" for b in BATCHES))
    for mode in MODES:
        print(f"{mode:<26}" + "".join(f"{f[mode][b]:>12.1f}" for b in BATCHES))
    for mode in MODES[1:]:
        print(f"{'ratio ' + mode[6:] + ' / in-process':<26}" +
              "".join(f"{f['ratio_' + mode][b]:>11.2f}x" for b in BATCHES))
    print(f"\n{'latency, ms':<34}{'p50':>8}{'p99':>8}")
    rows = [("no-op handle call (info)", f["noop_handle_ms"]), ("1 frame, in-process", f["embed1_ms"]["inprocess"]),
            ("1 frame, through Serve", f["embed1_ms"]["serve"]), ("per-call overhead (difference)",
                                                                   f["per_call_overhead_ms"])]
    for name, figure in rows:
        print(f"{name:<34}{figure['p50']:>8.2f}{figure['p99']:>8.2f}")
    verdict = "met" if f["target_met"] else "NOT met"
    print(f"\ntarget: Serve >= {TARGET_RATIO}x in-process at batch {TARGET_BATCH}: {verdict} "
          f"(one at a time {f['ratio_serve_one_at_a_time'][TARGET_BATCH]:.2f}x, "
          f"pipelined {f['ratio_serve_pipelined'][TARGET_BATCH]:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FRAMES} frames, {QUICK_REPEATS} runs each")
    parser.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model directory")
    parser.add_argument("--data", default=DEFAULT_DATA, help="where the held-out video is generated (reused)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="both sides use it")
    parser.add_argument("--threads", type=int, default=None, help="model threads, both sides (default: every core)")
    parser.add_argument("--batch-wait", type=float, default=DEFAULT_BATCH_WAIT_S,
                        help="the deployment's batch_wait_timeout_s (a batch short of --max frames waits this long)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    problem = missing_model("clip", args.clip)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_MISSING_MODEL
    started, load_before = time.monotonic(), os.getloadavg()[0]
    args.clip = str(Path(args.clip).resolve())
    threads = args.threads or os.cpu_count() or 1
    count = args.frames or (QUICK_FRAMES if args.quick else DEFAULT_FRAMES)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    calls = QUICK_CALLS if args.quick else DEFAULT_CALLS
    video = str(next(iter(heldout_videos(Path(args.data), 1, VIDEO_SECONDS).values())))
    frames = frames_for(video, count)
    figures = measure(args, frames, threads, repeats, calls)
    print(f"CLIP {args.clip} on {args.device}, {threads} threads both sides, {count} frames "
          f"{frames.shape[1]}x{frames.shape[2]} of {video}; best of {repeats}; one replica, batch wait "
          f"{args.batch_wait * MS:g} ms, max batch {MAX_BATCH}, pipelined {IN_FLIGHT} in flight; "
          f"Serve started in {figures['serve_start_s']:.1f} s; 1-min load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (others' work on a shared machine skews every figure)")
    print_table(figures)
    report = {"benchmark": "serving", "quick": args.quick, "clip": args.clip, "device": args.device,
              "threads": threads, "cpus": os.cpu_count(), "frames": count, "frame_shape": list(frames.shape[1:]),
              "repeats": repeats, "latency_calls": calls, "batch_wait_s": args.batch_wait, "max_batch": MAX_BATCH,
              "in_flight": IN_FLIGHT, "target_ratio": TARGET_RATIO, **figures,
              "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]},
              "elapsed_s": time.monotonic() - started}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
