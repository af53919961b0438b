"""CLIP prescan throughput, torch against ONNX Runtime with decoding overlapped, and decoding alone
beside it: a prescan can go no faster than its decoder, so decoding must run well ahead of the CLIP pass.

On one held-out shapes-world video (the frame-selection benchmark's first; or --video), at --fps:
- decode only: `iter_batches` with no CLIP, the ceiling decoding puts on any prescan;
- embed only, per backend: the frames already in memory, the CLIP pass's own rate;
- the ClipPrescan node, per backend: decoding in its background thread overlapped with the CLIP pass,
  no cache, timed from the end of setup() (model loaded; decoding starts there) to its last frame.
Decoding is hidden when the node's rate is close to embed-only and well below decode-only. The ONNX
model is exported from --clip into a temporary directory unless --onnx names an export. Each figure is
the best of --repeats runs.

    python benchmarks/clip_prescan.py [--quick] [--clip DIR] [--onnx DIR] [--fps F] [--threads N]

A table, then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the sibling benchmark must import
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.frame_selection import (DEFAULT_CLIP, DEFAULT_DATA, EXIT_MISSING_MODEL, heldout_videos,  # noqa: E402
                                        missing_model)
from nodes.clip.embedder import BACKEND_ONNX, BACKEND_TORCH, BACKENDS, load_embedder  # noqa: E402
from nodes.clip_prescan import DEFAULT_BATCH, ClipPrescan  # noqa: E402
from nodes.video_decode import iter_batches  # noqa: E402
from pipeline.harness import NodeHarness  # noqa: E402

DEFAULT_SECONDS, QUICK_SECONDS = 60.0, 10.0
DEFAULT_REPEATS, QUICK_REPEATS = 3, 2
DEFAULT_FPS = None  # every frame: enough CLIP work to time on a short video
MAX_TICKS = 1_000_000
DECODE_HEADROOM = 1.5  # decoding counts as hidden when it runs at least this much faster than the prescan


def best_rate(run: Callable[[], int], repeats: int) -> dict[str, float]:
    """The best frames-per-second of `repeats` runs of `run` (which returns the frames it handled)."""
    best_s, frames = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        frames = run()
        best_s = min(best_s, time.perf_counter() - started)
    return {"frames": frames, "seconds": best_s, "fps": frames / best_s if best_s > 0 else 0.0}


def decode_only(video: str, fps: float | None, batch_size: int) -> int:
    return sum(len(batch) for batch in iter_batches(video, fps=fps, batch_size=batch_size))


def decoded_frames(video: str, fps: float | None, batch_size: int) -> np.ndarray:
    """(N, H, W, 3) uint8: the frames the prescan would score, kept in memory."""
    return np.concatenate([np.stack(b.images) for b in iter_batches(video, fps=fps, batch_size=batch_size)])


def embed_only(embedder: Any, frames: np.ndarray, batch_size: int) -> int:
    for start in range(0, len(frames), batch_size):
        embedder.embed_images(frames[start:start + batch_size])
    return len(frames)


def prescan_node(params: dict[str, Any], repeats: int) -> dict[str, float]:
    """The node as a graph runs it; each run a fresh node, timed from the end of its setup()."""
    best_s, frames = float("inf"), 0
    for _ in range(repeats):
        harness = NodeHarness(ClipPrescan, params)
        try:
            harness.setup()  # loads the model, embeds the question, then starts decoding
            started = time.perf_counter()
            for _ in range(MAX_TICKS):
                if harness.runner.finished:
                    break
                harness.tick()
            best_s = min(best_s, time.perf_counter() - started)
            frames = harness.node.counters["frames_embedded"]
        finally:
            harness.close()
    return {"frames": frames, "seconds": best_s, "fps": frames / best_s if best_s > 0 else 0.0}


def measure(video: str, models: dict[str, str], *, fps: float | None, batch_size: int, device: str,
            threads: int | None, repeats: int) -> dict[str, Any]:
    """Every figure for one video: decode only, and embed only and the node per backend."""
    frames = decoded_frames(video, fps, batch_size)
    figures: dict[str, Any] = {"decode_only": best_rate(lambda: decode_only(video, fps, batch_size), repeats),
                               "embed_only": {}, "prescan_node": {}}
    for backend, model in models.items():
        embedder = load_embedder(model, backend, device, threads)
        embed_only(embedder, frames[:batch_size], batch_size)  # warm-up: first-call allocations
        figures["embed_only"][backend] = best_rate(lambda: embed_only(embedder, frames, batch_size), repeats)
        params = {"question": "Which shape vanished last?", "video": video, "model": model, "backend": backend,
                  "device": device, "num_threads": threads, "fps": fps, "batch_size": batch_size, "cache_dir": None}
        figures["prescan_node"][backend] = prescan_node(params, repeats)
    node = figures["prescan_node"]
    figures["onnx_over_torch"] = (node[BACKEND_ONNX]["fps"] / node[BACKEND_TORCH]["fps"]
                                  if set(node) == set(BACKENDS) and node[BACKEND_TORCH]["fps"] else None)
    fastest = max(v["fps"] for v in node.values())
    figures["decode_over_fastest_prescan"] = figures["decode_only"]["fps"] / fastest if fastest else None
    figures["decode_is_bottleneck"] = bool(fastest and figures["decode_only"]["fps"] < DECODE_HEADROOM * fastest)
    figures["n_frames"] = int(len(frames))
    return figures


def print_table(figures: dict[str, Any]) -> None:
    print(f"\n{'':<30}{'frames/s':>10}{'frames':>8}")
    print(f"{'decode only':<30}{figures['decode_only']['fps']:>10.1f}{figures['decode_only']['frames']:>8}")
    for backend, f in figures["embed_only"].items():
        print(f"{'embed only, ' + backend:<30}{f['fps']:>10.1f}{f['frames']:>8}")
    for backend, f in figures["prescan_node"].items():
        print(f"{'prescan node, ' + backend + ' (overlapped)':<30}{f['fps']:>10.1f}{f['frames']:>8}")
    ratio, headroom = figures["onnx_over_torch"], figures["decode_over_fastest_prescan"]
    print(f"ONNX Runtime / torch (prescan node): {'—' if ratio is None else f'{ratio:.2f}×'}; decode only / fastest "
          f"prescan: {'—' if headroom is None else f'{headroom:.1f}×'} "
          f"({'decode IS the bottleneck' if figures['decode_is_bottleneck'] else 'decode is not the bottleneck'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_SECONDS:g} s video, {QUICK_REPEATS} runs each")
    parser.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model directory (torch)")
    parser.add_argument("--onnx", default=None, help="its ONNX export (default: exported now into a temporary directory)")
    parser.add_argument("--video", default=None, help="a local video (default: a generated held-out shapes-world one)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="where the held-out video is generated (reused)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="prescan rate (default: every frame)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (both backends)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the CLIP pass (default: the runtime's)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    problem = missing_model("clip", args.clip)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_MISSING_MODEL
    started = time.monotonic()
    seconds = QUICK_SECONDS if args.quick else DEFAULT_SECONDS
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    video = args.video or str(next(iter(heldout_videos(Path(args.data), 1, seconds).values())))
    with tempfile.TemporaryDirectory(prefix="clip_onnx_") as scratch:
        onnx = args.onnx
        if onnx is None:
            from nodes.clip.onnx_export import export_clip

            onnx = str(Path(scratch) / "onnx")
            export_clip(args.clip, onnx)
        models = {BACKEND_TORCH: args.clip, BACKEND_ONNX: onnx}
        figures = measure(video, models, fps=args.fps, batch_size=args.batch_size, device=args.device,
                          threads=args.threads, repeats=repeats)
    rate = "every frame" if args.fps is None else f"{args.fps:g} fps"
    print(f"CLIP prescan of {video}: {figures['n_frames']} frames ({rate}), "
          f"batch {args.batch_size}, device {args.device}, threads {args.threads or 'default'}, best of {repeats}")
    print_table(figures)
    report = {"benchmark": "clip_prescan", "quick": args.quick, "video": video, "clip": args.clip,
              "onnx": args.onnx or "exported to a temporary directory", "fps": args.fps, "batch_size": args.batch_size,
              "device": args.device, "threads": args.threads, "repeats": repeats, **figures,
              "elapsed_s": time.monotonic() - started}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
