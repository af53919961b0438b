"""A training run bounded by steps, minutes or both, and its learning-rate schedule.

Runs on a shared CPU are planned in minutes, runs on a lent GPU in minutes too, reproducible ones in
steps; the cosine decay follows whichever budget is nearer its end. Shared by `groundloop train clip`
and `groundloop train vlm`.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

MIN_LR_FRACTION = 0.05  # the cosine decays to this fraction of the peak


def budget_seconds(minutes: float | None, steps: int | None, default_minutes: float) -> float | None:
    """The time budget: `minutes`, or `default_minutes` when neither budget is given."""
    if minutes is None and steps is None:
        return default_minutes * 60.0
    return None if minutes is None else minutes * 60.0


def run_progress(step: int, elapsed_s: float, steps: int | None, budget_s: float | None) -> float:
    """How far through the run, 0..1: the step budget or the time budget, whichever is nearer its end."""
    by_steps = step / steps if steps else 0.0
    by_time = elapsed_s / budget_s if budget_s else 0.0
    return min(1.0, max(by_steps, by_time))


def warmup_cosine_lr(peak: float, warmup_steps: int, step: int, progress: float) -> float:
    """Linear warm-up over the first `warmup_steps`, then a cosine decay to MIN_LR_FRACTION by `progress` 1."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * (MIN_LR_FRACTION + (1.0 - MIN_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def trainer_main(register: Callable[[argparse._SubParsersAction], None], prog: str, argv: list[str] | None) -> int:
    """`python -m <trainer module> <name> ...`, the same as `groundloop train <name> ...`: for machines
    where groundloop is not installed and its entry points do not exist (a lent GPU)."""
    parser = argparse.ArgumentParser(prog=prog)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def add_run_arguments(p: argparse.ArgumentParser, defaults: Any) -> None:
    """The options every shapes-world trainer shares (logging, checkpoints, device, data workers,
    seed, resume), with the defaults of its `TrainOptions`."""
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--data-workers", type=int, default=defaults.data_workers,
                   help="processes making batches (0: one thread); several keep a GPU fed")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--resume", action="store_true", help="continue from <ckpt-dir>/latest.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
