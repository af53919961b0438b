"""`groundloop train clip`: the shapes-world CLIP, trained contrastively on frames rendered in memory.

Each step draws a batch of (frame, caption) pairs from train-split scenes (`nodes.clip.data`, made
in a thread ahead of the step) and minimises CLIP's symmetric cross-entropy over the batch's
image-text similarities. In-batch negatives, except that a caption which also fits another image of
the batch (the same shape is in both) counts as a positive there rather than a negative. AdamW with a
linear warm-up, then a cosine decay over the run — its length being the step budget or the time
budget, whichever comes first. CUDA when present.

Outputs: the model directory at --out (rewritten at every checkpoint, so an interrupted run leaves a
usable model; its `groundloop_clip.json` records steps, time and the held-out retrieval AUC), and in
--ckpt-dir a resumable `latest.pt` and `metrics.jsonl`. `--resume` continues a run where it stopped,
within the same budget (time already spent counts).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nodes.clip.config import ClipShapesConfig
from nodes.clip.data import Prefetcher, SceneFrames, all_labels, make_batch, measure_mean_std, retrieval_auc
from nodes.clip.model import DEFAULT_MODEL_DIR, build_model, count_parameters, save_model_dir
from nodes.clip.processing import ImagePreprocessor, build_tokenizer, tokenize
from nodes.model_dir import atomic_torch_save, load_train_state, resolve_device
from nodes.train_budget import add_run_arguments, budget_seconds, run_progress, trainer_main, warmup_cosine_lr
from sim.shapes_world.dataset import HELDOUT, TRAIN
from sim.shapes_world.questions import a_or_an
from sim.shapes_world.scene import SceneConfig

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel

STATE_FORMAT = "groundloop.clip_train/1"
STATE_FILE = "latest.pt"
METRICS_FILE = "metrics.jsonl"
RUNS_DIR = Path("runs/clip")
DEFAULT_MINUTES = 20.0
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature at 100
MEAN_STD_FRAMES = 256
EVAL_CHUNK = 256
EVAL_SEED = 12345


@dataclass
class TrainOptions:
    """Everything about a run that is not the network itself."""

    out: Path = Path(DEFAULT_MODEL_DIR)
    ckpt_dir: Path | None = None  # default: runs/clip/<out name>
    minutes: float | None = None  # neither minutes nor steps: DEFAULT_MINUTES
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    train_scenes: int = 2_000
    eval_scenes: int = 100
    eval_images: int = 512
    frame_size: int = 224  # the shapes-world video size frames are drawn at
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int = 2
    data_workers: int = 0  # forked batch makers (0: one thread); a GPU run wants several
    resume: bool = False
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return self.ckpt_dir if self.ckpt_dir is not None else RUNS_DIR / self.out.name

    @property
    def budget_s(self) -> float | None:
        return budget_seconds(self.minutes, self.steps, DEFAULT_MINUTES)


def learning_rate(options: TrainOptions, step: int, elapsed_s: float) -> float:
    progress = run_progress(step, elapsed_s, options.steps, options.budget_s)
    return warmup_cosine_lr(options.lr, options.warmup_steps, step, progress)


def _optimizer(model: "CLIPModel", options: TrainOptions) -> "torch.optim.Optimizer":
    """AdamW; no weight decay on biases, norms, embeddings' scale and the temperature (1-d params)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=options.lr, betas=(0.9, 0.98), eps=1e-6)


def _embed_images(model: "CLIPModel", pixels: "torch.Tensor") -> "torch.Tensor":
    import torch.nn.functional as F

    return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)  # (B, D)


def _embed_texts(model: "CLIPModel", tokens: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    import torch.nn.functional as F

    return F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)  # (N, D)


def contrastive_loss(image: "torch.Tensor", text: "torch.Tensor", scale: "torch.Tensor",
                     positives: "torch.Tensor") -> "torch.Tensor":
    """Symmetric cross-entropy whose targets spread over every caption that fits (positives (B, B))."""
    import torch.nn.functional as F

    logits = scale * image @ text.T  # (B, B): row i = image i against every caption
    targets = positives.float()
    image_to_text = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
    text_to_image = F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))
    return 0.5 * (image_to_text + text_to_image)


def evaluate(model: "CLIPModel", tokenizer: Any, config: ClipShapesConfig, pixels: np.ndarray,
             visible: list[frozenset[str]], device: "torch.device") -> dict[str, float]:
    """Held-out retrieval AUC (see `data.retrieval_auc`) of the current weights."""
    import torch

    labels = all_labels()
    tokens = {k: torch.from_numpy(v).to(device) for k, v in
              tokenize(tokenizer, [a_or_an(label) for label in labels], config.max_text_len).items()}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        text = _embed_texts(model, tokens)  # (L, D)
        image = torch.cat([_embed_images(model, torch.from_numpy(pixels[i: i + EVAL_CHUNK]).to(device))
                           for i in range(0, len(pixels), EVAL_CHUNK)])  # (N, D)
    model.train(was_training)
    return retrieval_auc(image.cpu().numpy(), visible, text.cpu().numpy(), labels)


def _finished(options: TrainOptions, step: int, elapsed_s: float) -> bool:
    budget_s = options.budget_s
    return (options.steps is not None and step >= options.steps) or (budget_s is not None and elapsed_s >= budget_s)


def train_clip(options: TrainOptions, config: ClipShapesConfig | None = None) -> dict[str, Any]:
    """Train (or resume) and write the model directory; the run's summary with the held-out AUC."""
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per checkpoint save would break up the training bar
    device = resolve_device(options.device)
    torch.set_num_threads(options.threads)
    state = load_train_state(options.run_dir / STATE_FILE, options.resume, STATE_FORMAT, "CLIP")
    config = ClipShapesConfig.from_dict(state["config"]) if state is not None else (config or ClipShapesConfig())
    config.validate()
    scene_config = SceneConfig(width=options.frame_size, height=options.frame_size)
    train_frames = SceneFrames(TRAIN, options.train_scenes, scene_config)
    if config.image_mean is None or config.image_std is None:
        mean, std = measure_mean_std(train_frames, MEAN_STD_FRAMES, options.seed)
        config = replace(config, image_mean=mean, image_std=std)
    tokenizer = build_tokenizer(config.max_text_len)
    torch.manual_seed(options.seed)
    model = build_model(config, tokenizer).to(device)
    optimizer = _optimizer(model, options)
    step, elapsed_s, curve, last_eval = 0, 0.0, [], {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_s, curve, last_eval = state["step"], state["elapsed_s"], state["curve"], state["heldout"]
    preprocess = ImagePreprocessor.for_config(config)
    eval_images, eval_visible = SceneFrames(HELDOUT, options.eval_scenes, scene_config).images(
        options.eval_images, np.random.default_rng(EVAL_SEED))
    eval_pixels = preprocess(eval_images)  # (N, 3, S, S)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    print(f"clip: {count_parameters(model) / 1e6:.2f}M parameters, batch {options.batch_size}, device {device}, "
          f"{options.threads} threads; budget {options.steps or '-'} steps / "
          f"{'-' if options.budget_s is None else f'{options.budget_s / 60:.1f} min'}; from step {step}")

    def checkpoint(final: bool) -> None:
        meta = {"train": {"step": step, "elapsed_s": round(elapsed_s, 1), "final": final, "device": str(device),
                          "batch_size": options.batch_size, "train_scenes": options.train_scenes,
                          "split": {"train": TRAIN, "heldout": HELDOUT}, "seed": options.seed},
                "heldout": last_eval}
        save_model_dir(model, tokenizer, config, options.out, meta)
        atomic_torch_save({"format": STATE_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s,
                            "curve": curve, "heldout": last_eval}, options.run_dir / STATE_FILE)

    def log(row: dict[str, Any]) -> None:
        curve.append(row)
        with open(options.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    make = partial(make_batch, train_frames, preprocess, options.batch_size)
    pairs = Prefetcher(make, seed=options.seed * 1_000_003 + step,  # a resumed run draws new batches
                       workers=options.data_workers)
    bar = tqdm(total=options.steps, initial=step, desc="clip", unit="step", disable=not options.progress,
               dynamic_ncols=True)
    losses: list[torch.Tensor] = []
    model.train()
    try:
        resumed_at, started = elapsed_s, time.monotonic()
        while not _finished(options, step, elapsed_s):
            batch = pairs.next()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(options, step, elapsed_s)
            tokens = {k: torch.from_numpy(v).to(device) for k, v in
                      tokenize(tokenizer, batch.captions, config.max_text_len).items()}
            image = _embed_images(model, torch.from_numpy(batch.pixels).to(device))
            text = _embed_texts(model, tokens)
            loss = contrastive_loss(image, text, model.logit_scale.exp(), torch.from_numpy(batch.positives).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
            losses.append(loss.detach())  # no device sync per step
            step += 1
            elapsed_s = resumed_at + time.monotonic() - started
            bar.update(1)
            done = _finished(options, step, elapsed_s)
            if step % options.log_every == 0 or done:
                row = {"step": step, "loss": torch.stack(losses).mean().item(), "lr": optimizer.param_groups[0]["lr"],
                       "logit_scale": model.logit_scale.exp().item(), "elapsed_s": round(elapsed_s, 1)}
                losses = []
                if step % options.eval_every == 0 or done:
                    last_eval = {**evaluate(model, tokenizer, config, eval_pixels, eval_visible, device),
                                 "images": len(eval_pixels), "step": step}
                    row.update(heldout_auc=last_eval["auc"], heldout_hard_auc=last_eval["hard_auc"])
                log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", auc=f"{last_eval.get('auc', float('nan')):.3f}")
            if step % options.checkpoint_every == 0 and not done:
                checkpoint(final=False)
    finally:
        pairs.close()
        bar.close()
    if not last_eval or last_eval["step"] != step:  # a budget spent before this run took a step
        last_eval = {**evaluate(model, tokenizer, config, eval_pixels, eval_visible, device),
                     "images": len(eval_pixels), "step": step}
    checkpoint(final=True)
    return {"out": str(options.out), "step": step, "elapsed_s": round(elapsed_s, 1), "heldout": last_eval,
            "loss": curve[-1]["loss"] if curve else None}


def _config_from_args(args: argparse.Namespace) -> ClipShapesConfig:
    return ClipShapesConfig(image_size=args.image_size, patch_size=args.patch_size, vision_layers=args.layers,
                            text_layers=args.layers, width=args.width, heads=args.heads, projection_dim=args.width)


def _options_from_args(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(out=Path(args.out), ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
                        minutes=args.minutes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        train_scenes=args.train_scenes, eval_images=args.eval_images, log_every=args.log_every,
                        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                        device=args.device, threads=args.threads, data_workers=args.data_workers,
                        resume=args.resume, progress=not args.no_progress)


def _run_from_args(args: argparse.Namespace) -> int:
    summary = train_clip(_options_from_args(args), _config_from_args(args))
    heldout = summary["heldout"]
    print(f"held-out retrieval AUC {heldout['auc']:.4f} (hard negatives {heldout['hard_auc']:.4f}) "
          f"on {heldout['images']} frames after {summary['step']} steps")
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `clip` to the `train` command's sub-parsers (`groundloop train clip ...`)."""
    defaults, arch = TrainOptions(), ClipShapesConfig()
    p = subparsers.add_parser("clip", help="train the shapes-world CLIP (frame prescan) on frames rendered in memory")
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help="model directory to write")
    p.add_argument("--ckpt-dir", help="resumable state and metrics (default runs/clip/<out name>)")
    p.add_argument("--minutes", type=float, help=f"time budget (default {DEFAULT_MINUTES:g} when --steps is not given)")
    p.add_argument("--steps", type=int, help="step budget (with --minutes: whichever comes first)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--train-scenes", type=int, default=defaults.train_scenes, help="train-split scenes drawn from")
    p.add_argument("--eval-images", type=int, default=defaults.eval_images, help="held-out frames for the AUC")
    p.add_argument("--image-size", type=int, default=arch.image_size)
    p.add_argument("--patch-size", type=int, default=arch.patch_size)
    p.add_argument("--layers", type=int, default=arch.vision_layers, help="vision and text layers each")
    p.add_argument("--width", type=int, default=arch.width, help="width of both towers and the joint space")
    p.add_argument("--heads", type=int, default=arch.heads)
    add_run_arguments(p, defaults)
    p.set_defaults(func=_run_from_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodes.clip.train clip ...`, the same as `groundloop train clip ...`."""
    return trainer_main(register, "python -m nodes.clip.train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
