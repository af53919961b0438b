"""`groundloop train action-expert`: the paper's two-stage training (APPF) on our ManiSkill demos.

Stage 1, action pre-training: trajectories only (state + guidance → actions), the point-feature slot
held at zero; cheap, so it runs at a large batch. Stage 2, point-cloud fine-tuning: the same network,
initialised from stage 1's EMA weights, now with the DP3 encoder on the ee-relative cloud.
Optimisation is DP3's: AdamW lr 1e-4 (betas 0.95/0.999, wd 1e-6), cosine schedule with warm-up,
EMA with power 0.75.

Outputs: the small inference checkpoint at --out (EMA weights, float16), and in --ckpt-dir a
resumable `latest.pt`, `stage1.pt` and `metrics.jsonl` (one JSON line per log interval).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from nodes.action_expert.checkpoint import save_policy
from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.dataset import DemoDataset, Episode, MissingDemosError, WindowSampler, load_episodes
from nodes.action_expert.model import ActionExpertPolicy
from nodes.action_expert.normalizer import LinearNormalizer
from nodes.model_dir import atomic_torch_save, resolve_device
from nodes.train_budget import trainer_main


@dataclass
class TrainOptions:
    """Everything about a run that is not the network itself."""

    data_dirs: list[Path]
    out: Path
    ckpt_dir: Path | None = None  # default: runs/action_expert/<out stem>
    stage1_steps: int = 8_000
    stage2_steps: int = 4_000
    stage1_batch_size: int = 256
    stage2_batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_power: float = 0.75
    log_every: int = 100
    eval_every: int = 1_000
    checkpoint_every: int = 1_000
    val_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    resume: bool = False
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return self.ckpt_dir if self.ckpt_dir is not None else Path("runs/action_expert") / self.out.stem


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _split_episodes(episodes: list[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Hold out whole episodes, so validation windows never share a demo with training ones."""
    n_val = max(1, round(len(episodes) * val_fraction)) if val_fraction > 0 and len(episodes) >= 5 else 0
    order = np.random.default_rng(seed).permutation(len(episodes))
    val = [episodes[i] for i in order[:n_val]]
    train = [episodes[i] for i in order[n_val:]]
    return train, val


def _fixed_batch(dataset: DemoDataset, size: int, seed: int) -> dict[str, torch.Tensor]:
    """A deterministic evaluation batch (same windows, same point subsets every time)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        picks = torch.randperm(len(dataset))[:size].tolist()
        items = [dataset[i] for i in picks]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


@torch.no_grad()
def _evaluate(policy: ActionExpertPolicy, batch: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
    """Denoising loss and sampled-action MSE (executed part of the chunk, action units) on a fixed batch."""
    policy.eval()
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        loss = policy.compute_loss(batch).item()
        generator = torch.Generator(device=device).manual_seed(seed)
        predicted = policy.predict_action(batch, generator=generator)  # (B, Na, Da)
    start = policy.config.n_obs_steps - 1
    target = batch["action"][:, start : start + policy.config.n_action_steps]
    policy.train()
    return {"val_loss": loss, "val_action_mse": torch.mean((predicted - target) ** 2).item()}


def _resume_state(options: TrainOptions) -> dict[str, Any] | None:
    path = options.run_dir / "latest.pt"
    if not options.resume:
        return None
    if not path.is_file():
        tqdm.write(f"--resume: no {path} yet, starting from scratch")
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def train_action_expert(options: TrainOptions, config: ActionExpertConfig) -> dict[str, Any]:
    """Run both stages (either may have 0 steps); returns a summary with each stage's loss curve."""
    device = resolve_device(options.device)
    torch.set_num_threads(options.threads)
    resume = _resume_state(options)
    if resume is not None:
        config = ActionExpertConfig.from_dict(resume["config"])  # the run's network wins over CLI flags
    config.validate()

    use_points = options.stage2_steps > 0
    episodes = load_episodes(options.data_dirs, config, load_point_cloud=use_points)
    train_eps, val_eps = _split_episodes(episodes, options.val_fraction, options.seed)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        normalizer = LinearNormalizer.from_state_dict(resume["normalizer"])
    else:
        fit_set = DemoDataset(train_eps, config, use_point_cloud=use_points)
        normalizer = LinearNormalizer().fit(fit_set.normalizer_data(seed=options.seed))
    tqdm.write(
        f"action expert: {len(train_eps)} train / {len(val_eps)} val episodes from "
        f"{', '.join(map(str, options.data_dirs))}; device {device}; {options.threads} threads"
    )

    summary: dict[str, Any] = {"episodes": len(episodes), "stages": {}}
    weights: dict[str, torch.Tensor] | None = resume["ema_weights"] if resume is not None else None
    start_stage = resume["stage"] if resume is not None else 1
    stages = [(1, options.stage1_steps, options.stage1_batch_size), (2, options.stage2_steps, options.stage2_batch_size)]
    last_stage = max((s for s, steps, _ in stages if steps > 0), default=0)
    for stage, steps, batch_size in stages:
        if steps <= 0 or stage < start_stage:
            continue
        stage_config = dataclasses.replace(config, use_point_cloud=stage == 2)
        stage_resume = resume if resume is not None and resume["stage"] == stage else None
        policy, curve = _run_stage(
            stage, steps, batch_size, stage_config, normalizer, weights, train_eps, val_eps,
            options, device, stage_resume, is_last=stage == last_stage,
        )
        weights = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}  # EMA weights
        summary["stages"][stage] = curve
    return summary


def _run_stage(
    stage: int,
    steps: int,
    batch_size: int,
    config: ActionExpertConfig,
    normalizer: LinearNormalizer,
    init_weights: dict[str, torch.Tensor] | None,
    train_eps: list[Episode],
    val_eps: list[Episode],
    options: TrainOptions,
    device: torch.device,
    resume: dict[str, Any] | None,
    *,
    is_last: bool,
) -> tuple[ActionExpertPolicy, list[dict[str, float]]]:
    """One stage; returns the policy holding its EMA weights and the logged curve."""
    _seed_everything(options.seed + stage)
    policy = ActionExpertPolicy(config, normalizer).to(device)
    if init_weights is not None:
        policy.load_state_dict(init_weights)  # stage 1's EMA weights: the point slot was zeros, the shapes match
        if config.use_point_cloud and resume is None:
            policy.obs_encoder.point_encoder.silence()  # stage 2 begins exactly where stage 1 ended
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=options.lr, betas=options.betas, weight_decay=options.weight_decay
    )
    lr_scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=min(options.warmup_steps, steps // 10), num_training_steps=steps
    )
    ema = EMAModel(
        policy.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=options.ema_power, foreach=True
    )
    step, curve = 0, []
    if resume is not None:
        policy.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        lr_scheduler.load_state_dict(resume["lr_scheduler"])
        ema.load_state_dict(resume["ema"])
        step, curve = resume["step"], resume["curve"]
        torch.set_rng_state(resume["torch_rng"])
    ema.to(device)

    sampler = WindowSampler(DemoDataset(train_eps, config, use_point_cloud=config.use_point_cloud), device)
    val_batch = _fixed_batch(DemoDataset(val_eps, config, use_point_cloud=config.use_point_cloud), 256, options.seed) if val_eps else None
    out_path = options.out if is_last else options.run_dir / f"stage{stage}.pt"

    def save(final: bool) -> None:
        ema.store(policy.parameters())
        ema.copy_to(policy.parameters())
        meta = {
            "stage": stage, "step": step, "final": final, "episodes": len(train_eps),
            "data": [str(d) for d in options.data_dirs], "curve_tail": curve[-5:],
        }
        save_policy(policy, out_path, meta=meta)
        ema_weights = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
        ema.restore(policy.parameters())
        atomic_torch_save(
            {
                "stage": stage, "step": step, "config": config.to_dict(), "normalizer": normalizer.state_dict(),
                "model": policy.state_dict(), "ema": ema.state_dict(), "ema_weights": ema_weights,
                "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "curve": curve, "torch_rng": torch.get_rng_state(),
            },
            options.run_dir / "latest.pt",
        )

    policy.train()
    started, window = time.monotonic(), []
    bar = tqdm(total=steps, initial=step, desc=f"stage {stage}", disable=not options.progress, dynamic_ncols=True)
    while step < steps:
        loss = policy.compute_loss(sampler.sample(batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        ema.step(policy.parameters())
        step += 1
        window.append(loss.detach())  # no GPU sync per step
        bar.update(1)
        if step % options.log_every == 0 or step == steps:
            row = {"stage": stage, "step": step, "loss": torch.stack(window).mean().item(), "lr": lr_scheduler.get_last_lr()[0],
                   "elapsed_s": round(time.monotonic() - started, 1)}
            window = []
            if val_batch is not None and (step % options.eval_every == 0 or step == steps):
                ema.store(policy.parameters())
                ema.copy_to(policy.parameters())
                row.update(_evaluate(policy, val_batch, options.seed))
                ema.restore(policy.parameters())
            curve.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}")
            with open(options.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        if step % options.checkpoint_every == 0 or step == steps:
            save(final=step == steps)
    bar.close()
    ema.copy_to(policy.parameters())
    return policy, curve


def _options_from_args(args: argparse.Namespace) -> tuple[TrainOptions, ActionExpertConfig]:
    config = ActionExpertConfig(use_guidance=not args.no_guidance, n_points=args.n_points, down_dims=tuple(args.down_dims))
    options = TrainOptions(
        data_dirs=[Path(d) for d in args.data], out=Path(args.out),
        ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
        stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
        stage1_batch_size=args.stage1_batch_size, stage2_batch_size=args.stage2_batch_size,
        lr=args.lr, seed=args.seed, device=args.device, threads=args.threads,
        log_every=args.log_every, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        resume=args.resume, progress=not args.no_progress,
    )
    return options, config


def _run_from_args(args: argparse.Namespace) -> int:
    options, config = _options_from_args(args)
    try:
        summary = train_action_expert(options, config)
    except MissingDemosError as exc:  # a setup mistake, not a crash: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finals = {stage: curve[-1] for stage, curve in summary["stages"].items() if curve}
    print(json.dumps({"out": str(options.out), "episodes": summary["episodes"], "final": finals}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `action-expert` to the `train` command's sub-parsers (`groundloop train action-expert ...`)."""
    defaults = TrainOptions(data_dirs=[], out=Path())
    p = subparsers.add_parser("action-expert", help="train the waypoint-guided point-cloud diffusion action expert")
    p.add_argument("--data", action="append", required=True, help="demo directory or pack (repeat for several tasks)")
    p.add_argument("--out", required=True, help="inference checkpoint to write, e.g. models/action_expert_pickcube.pt")
    p.add_argument("--ckpt-dir", help="resumable state and metrics (default runs/action_expert/<out stem>)")
    p.add_argument("--stage1-steps", type=int, default=defaults.stage1_steps, help="action pre-training, no point cloud")
    p.add_argument("--stage2-steps", type=int, default=defaults.stage2_steps, help="point-cloud fine-tuning")
    p.add_argument("--stage1-batch-size", type=int, default=defaults.stage1_batch_size)
    p.add_argument("--stage2-batch-size", type=int, default=defaults.stage2_batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--no-guidance", action="store_true", help="DP3-style baseline: same network, no waypoint guidance")
    p.add_argument("--n-points", type=int, default=ActionExpertConfig.n_points)
    p.add_argument("--down-dims", type=int, nargs="+", default=list(ActionExpertConfig.down_dims))
    p.add_argument("--device", default="auto", help="auto = CUDA when present, else CPU")
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--resume", action="store_true", help="continue from <ckpt-dir>/latest.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    p.set_defaults(func=_run_from_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodes.action_expert.train action-expert ...`, the same as `groundloop train action-expert ...`."""
    return trainer_main(register, "python -m nodes.action_expert.train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
