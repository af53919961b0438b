"""`groundloop train uground`: UGround on the shapes-world referring set, made in memory, on our CLIP's tower.

The VLM is built the `nodes.shapes_vlm` way on the CLIP at --clip (its vision tower frozen; the projector
and the Llama from scratch, the vocabulary grown by the referring words and [SEG]/[REJ]); the SAM is a
fresh small one (no pretrained SAM exists here, so its image encoder trains too, unlike the paper's frozen
ViT-H). Every step: a batch of train-split samples, the teacher-forced pass in the training mode (3 by
default: the layer policy samples a layer per [SEG]), the total loss (losses.py: CE + mask BCE/Dice with
the Gaussian similarity-map loss + 0.4·REINFORCE), one AdamW step with warm-up and cosine decay, over a
budget in steps or minutes, whichever ends first.

`--last-layer-share S` trains the first share S of the budget in mode 1 before switching to --mode. The
paper's policy starts from a pretrained LLaVA whose every layer already means something; ours starts from
scratch, and in straight mode 3 (measured: step 250 of a CPU run) the policy had put 94 % of its picks on
layer 0, the embeddings, whose map (a fixed token against the projected image) is the first to learn a
foreground blob, so the deeper layers, where an expression can act, got no similarity-map signal.
`--init-vlm models/vlm_shapes` starts the VLM from the trained shapes-world VLM instead (the paper's setting:
a trained LLaVA with [SEG]/[REJ] added); from scratch, 2400 CPU steps learnt a foreground mask and never
answered [REJ] (held-out gIoU 0.25, empty accuracy 0), from that VLM 1000 steps reached gIoU 0.34.

`--stills DIR` mixes grounded-picking camera stills (`groundloop sim grounded-stills`, nodes/uground/stills.py)
into the batches at `--stills-share`, and `--stills-eval DIR` reports held-out ones beside the shapes-world
metrics; `--init-uground DIR` fine-tunes a trained UGround (its sizes; the training knobs as given), its
vocabulary grown by the words added since ("cube"). The pointing loss (losses.py, `--pointing-weight`, not in
the paper) is what made the map tell one shape from another.

Outputs: the model directory at --out (rewritten at every checkpoint, so an interrupted run leaves a usable
model; its `groundloop_uground.json` records steps, time and the held-out metrics: gIoU, cIoU, empty and
target accuracy for mode 1, mode 3 and without the mask prompt, and per fixed layer at the end), and in
--ckpt-dir a resumable `latest.pt` and `metrics.jsonl`; `--resume` continues within the same budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodes.clip.data import Prefetcher
from nodes.clip.model import MissingModelError, require_model_dir
from nodes.model_dir import atomic_torch_save, load_train_state, resolve_device
from nodes.shapes_vlm.config import VlmShapesConfig
from nodes.shapes_vlm.model import DEFAULT_CLIP_DIR
from nodes.shapes_vlm.model import read_meta as read_vlm_meta
from nodes.train_budget import add_run_arguments, budget_seconds, run_progress, trainer_main, warmup_cosine_lr
from nodes.uground.config import DEFAULT_MODEL_DIR, MODE_LAST, MODES, REWARDS, UGroundConfig
from nodes.uground.data import ReferringSource, UGroundBatch
from nodes.uground.evaluate import MODE1, MODE3, NO_MASK_PROMPT, DEFAULT_VARIANTS, evaluate, layer_variants
from nodes.uground.losses import Losses, total_loss
from nodes.uground.model import UGroundModel, build_uground, load_init_uground, read_meta, save_uground_dir, to_inputs
from nodes.uground.model import require_model_dir as require_uground_dir
from nodes.uground.stills import GroundedStillsSource, MixedSource
from sim.shapes_world.dataset import HELDOUT, TRAIN
from sim.shapes_world.referring import DEFAULT_SIZE

STATE_FORMAT = "groundloop.uground_train/1"
STATE_FILE = "latest.pt"
METRICS_FILE = "metrics.jsonl"
RUNS_DIR = Path("runs/uground")
DEFAULT_MINUTES = 15.0
GRAD_CLIP = 1.0
BETAS = (0.9, 0.98)
HEADLINE = ("giou", "ciou", "empty_accuracy", "target_accuracy")
STILLS_KEY = "grounded_stills"  # the held-out grounded-picking stills' metrics, beside the shapes-world ones


@dataclass
class TrainOptions:
    """Everything about a run that is not the network itself."""

    clip: Path = Path(DEFAULT_CLIP_DIR)
    out: Path = Path(DEFAULT_MODEL_DIR)
    ckpt_dir: Path | None = None  # default: runs/uground/<out name>
    init_vlm: Path | None = None  # start the VLM from this trained shapes-world VLM (its sizes replace the config's)
    init_uground: Path | None = None  # start everything from this trained UGround (its sizes replace the config's)
    stills: Path | None = None  # grounded-picking stills (`groundloop sim grounded-stills`) mixed into training
    stills_share: float = 0.5  # of the training samples drawn from --stills
    stills_eval: Path | None = None  # held-out grounded-picking stills, evaluated beside the shapes-world set
    stills_eval_expressions: int = 600  # the first this many of their expressions (in file order)
    minutes: float | None = None  # neither minutes nor steps: DEFAULT_MINUTES
    steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-3  # SAM and the heads, trained from scratch
    vlm_lr: float | None = None  # the projector and language model (None: lr); lower when fine-tuning --init-vlm
    weight_decay: float = 0.01
    warmup_steps: int = 50
    last_layer_share: float = 0.0  # of the budget trained in mode 1 before the config's mode (see train_uground)
    train_scenes: int = 4_000
    eval_scenes: int = 100  # held-out scenes; every expression of each is evaluated
    eval_samples: int = 200  # of them, at the periodic evaluations (the final one takes all)
    image_size: int = DEFAULT_SIZE
    log_every: int = 25
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    data_workers: int = 0  # forked batch makers (0: one thread)
    resume: bool = False
    progress: bool = True
    half_weights: bool = False  # store the model directory's weights as float16

    @property
    def run_dir(self) -> Path:
        return self.ckpt_dir if self.ckpt_dir is not None else RUNS_DIR / self.out.name

    @property
    def budget_s(self) -> float | None:
        return budget_seconds(self.minutes, self.steps, DEFAULT_MINUTES)


def make_optimizer(model: UGroundModel, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW over everything that trains (the CLIP tower is frozen), each group's peak lr in 'peak_lr': the VLM
    at vlm_lr, the rest at lr; no weight decay on vectors or the policy."""
    vlm_lr = options.lr if options.vlm_lr is None else options.vlm_lr
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = options.weight_decay if p.ndim >= 2 and not name.startswith("policy.") else 0.0
            groups.setdefault((vlm_lr if name.startswith("vlm.") else options.lr, decay), []).append(p)
    return torch.optim.AdamW([{"params": params, "peak_lr": peak, "weight_decay": decay}
                              for (peak, decay), params in groups.items()], lr=options.lr, betas=BETAS)


def train_step(model: UGroundModel, batch: UGroundBatch, optimizer: torch.optim.Optimizer, device: torch.device,
               mode: int) -> Losses:
    """One optimiser step in `mode` (the policy samples in modes 2 and 3); the losses."""
    config = model.config
    out = model(to_inputs(batch, device), batch.image_hw, batch.sam_resized_hw, mode=mode, sample=True)
    losses = total_loss(config, logits=out.reading.logits, labels=torch.from_numpy(batch.labels).to(device),
                        mask_logits=out.masks.mask_logits, similarity=out.masks.similarity,
                        token_scores=out.masks.token_scores, grid_hw=model.grid,
                        targets=torch.from_numpy(batch.targets).to(device)[out.rows], choice=out.choice,
                        policy=model.policy)
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], GRAD_CLIP)
    optimizer.step()
    return losses


def _headline(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {f"{variant}_{key}": metrics[variant][key] for variant in (MODE1, MODE3, NO_MASK_PROMPT)
            for key in HEADLINE if isinstance(metrics.get(variant, {}).get(key), float)}


def train_uground(options: TrainOptions, config: UGroundConfig | None = None) -> dict[str, Any]:
    """Train (or resume) and write the model directory; the run's summary with the held-out metrics.
    A missing CLIP directory is a MissingModelError naming `groundloop train clip`."""
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the vocabulary resize's note on how new rows are initialised
    device = resolve_device(options.device)
    torch.set_num_threads(options.threads)
    state = load_train_state(options.run_dir / STATE_FILE, options.resume, STATE_FORMAT, "UGround")
    config = UGroundConfig.from_dict(state["config"]) if state is not None else (config or UGroundConfig())
    init_vlm = options.init_vlm if state is None else None  # a resumed run has its weights in the state
    init_uground = options.init_uground if state is None else None
    if init_vlm is not None and init_uground is not None:
        raise ValueError("give --init-vlm or --init-uground, not both")
    if init_vlm is not None:
        config = replace(config, vlm=VlmShapesConfig.from_dict(read_vlm_meta(require_model_dir(init_vlm))["config"]))
    if init_uground is not None:  # its network sizes; the training knobs (mode, reward, ...) stay as given
        trained = UGroundConfig.from_dict(read_meta(require_uground_dir(init_uground))["config"])
        config = replace(config, vlm=trained.vlm, sam=trained.sam)
    torch.manual_seed(options.seed)
    model, encoder = build_uground(options.clip, config, init_vlm)
    if init_uground is not None:
        load_init_uground(model, encoder, init_uground)
    step, elapsed_s, curve, last_eval = 0, 0.0, [], {}
    if state is not None:
        model.load_state_dict(state["model"])
        step, elapsed_s, curve, last_eval = state["step"], state["elapsed_s"], state["curve"], state["heldout"]
    model.to(device).train()
    optimizer = make_optimizer(model, options)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    train_source: ReferringSource | MixedSource = ReferringSource(TRAIN, options.train_scenes, options.image_size)
    if options.stills is not None:
        stills = GroundedStillsSource(options.stills)
        if stills.stills.size != options.image_size:  # one batch holds one image size
            raise ValueError(f"the stills at {options.stills} are {stills.stills.size} px, the referring set's "
                             f"{options.image_size} px (--image-size)")
        train_source = MixedSource([train_source, stills], [1.0 - options.stills_share, options.stills_share])
    heldout = ReferringSource(HELDOUT, options.eval_scenes, options.image_size).all_samples()
    heldout_stills = (GroundedStillsSource(options.stills_eval).all_samples(options.stills_eval_expressions)
                      if options.stills_eval else [])
    options.run_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    minutes = "-" if options.budget_s is None else f"{options.budget_s / 60:.1f} min"
    print(f"uground: {n_params / 1e6:.2f}M parameters, batch {options.batch_size}, mode {config.mode}, device "
          f"{device}, {options.threads} threads; budget {options.steps or '-'} steps / {minutes}; from step {step}; "
          f"{len(heldout)} held-out expressions, {len(heldout_stills)} on held-out grounded-picking stills")

    def checkpoint(final: bool) -> None:
        meta = {"train": {"step": step, "elapsed_s": round(elapsed_s, 1), "final": final, "device": str(device),
                          "parameters": n_params, "clip": str(options.clip), "batch_size": options.batch_size,
                          "lr": options.lr, "vlm_lr": options.vlm_lr,
                          "init_vlm": str(options.init_vlm) if options.init_vlm is not None else None,
                          "init_uground": str(options.init_uground) if options.init_uground is not None else None,
                          "stills": str(options.stills) if options.stills is not None else None,
                          "stills_share": options.stills_share if options.stills is not None else None,
                          "stills_eval": str(options.stills_eval) if options.stills_eval is not None else None,
                          "last_layer_share": options.last_layer_share,
                          "split": {"train": TRAIN, "heldout": HELDOUT}, "train_scenes": options.train_scenes,
                          "eval_scenes": options.eval_scenes, "seed": options.seed}, "heldout": last_eval}
        save_uground_dir(model, encoder, options.out, meta,
                         dtype=torch.float16 if options.half_weights else torch.float32)
        atomic_torch_save({"format": STATE_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s, "curve": curve,
                            "heldout": last_eval}, options.run_dir / STATE_FILE)

    def log(row: dict[str, Any]) -> None:
        curve.append(row)
        with open(options.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    batches = Prefetcher(lambda rng: encoder.batch([train_source.sample(rng) for _ in range(options.batch_size)]),
                         seed=options.seed * 1_000_003 + step, workers=options.data_workers)
    bar = tqdm(total=options.steps, initial=step, desc="uground", unit="step", disable=not options.progress)
    window: list[dict[str, float]] = []
    try:
        resumed_at, started = elapsed_s, time.monotonic()
        while run_progress(step, elapsed_s, options.steps, options.budget_s) < 1.0:
            progress = run_progress(step, elapsed_s, options.steps, options.budget_s)
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(group["peak_lr"], options.warmup_steps, step, progress)
            mode = MODE_LAST if progress < options.last_layer_share else config.mode
            window.append(train_step(model, batches.next(), optimizer, device, mode).log())
            step += 1
            elapsed_s = resumed_at + time.monotonic() - started
            bar.update(1)
            done = run_progress(step, elapsed_s, options.steps, options.budget_s) >= 1.0
            if step % options.log_every == 0 or done:
                row: dict[str, Any] = {"step": step, "mode": mode, "lr": optimizer.param_groups[0]["lr"],
                                       "elapsed_s": round(elapsed_s, 1), "baseline": float(model.policy.baseline),
                                       **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
                window = []
                if step % options.eval_every == 0 and not done:
                    metrics = evaluate(model, encoder, heldout[: options.eval_samples], device,
                                       batch_size=options.batch_size)
                    last_eval = {**metrics, "step": step, "n_expressions": min(len(heldout), options.eval_samples)}
                    row.update({f"heldout_{k}": v for k, v in _headline(metrics).items()})
                    if heldout_stills:
                        on_stills = evaluate(model, encoder, heldout_stills[: options.eval_samples], device,
                                             batch_size=options.batch_size)
                        last_eval[STILLS_KEY] = on_stills
                        row.update({f"stills_{k}": v for k, v in _headline(on_stills).items()})
                log(row)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("total", "ce", "mask_dice", "similarity_dice")})
            if step % options.checkpoint_every == 0 and not done:
                checkpoint(final=False)
    finally:
        batches.close()
        bar.close()
    variants = DEFAULT_VARIANTS + layer_variants(config.num_layers)
    last_eval = {**evaluate(model, encoder, heldout, device, batch_size=options.batch_size, variants=variants),
                 "step": step, "n_expressions": len(heldout)}
    if heldout_stills:
        last_eval[STILLS_KEY] = {**evaluate(model, encoder, heldout_stills, device, batch_size=options.batch_size,
                                            variants=variants), "n_expressions": len(heldout_stills)}
    checkpoint(final=True)
    return {"out": str(options.out), "step": step, "elapsed_s": round(elapsed_s, 1), "parameters": n_params,
            "heldout": last_eval}


def _run_from_args(args: argparse.Namespace) -> int:
    base = UGroundConfig()
    vlm = replace(base.vlm, hidden_size=args.hidden_size, layers=args.layers, heads=args.heads, kv_heads=args.heads)
    config = replace(base, vlm=vlm, sam=replace(base.sam, patch_size=args.sam_patch_size), mode=args.mode,
                     reward=args.reward, policy_weight=args.policy_weight, policy_init=args.policy_init,
                     pointing_weight=args.pointing_weight, ce_weight=args.ce_weight)
    options = TrainOptions(clip=Path(args.clip), out=Path(args.out),
                           ckpt_dir=Path(args.ckpt_dir) if args.ckpt_dir else None,
                           init_vlm=Path(args.init_vlm) if args.init_vlm else None,
                           init_uground=Path(args.init_uground) if args.init_uground else None,
                           stills=Path(args.stills) if args.stills else None, stills_share=args.stills_share,
                           stills_eval=Path(args.stills_eval) if args.stills_eval else None,
                           stills_eval_expressions=args.stills_eval_expressions, minutes=args.minutes,
                           steps=args.steps, batch_size=args.batch_size, lr=args.lr, vlm_lr=args.vlm_lr,
                           half_weights=args.half_weights,
                           last_layer_share=args.last_layer_share, train_scenes=args.train_scenes,
                           eval_scenes=args.eval_scenes, eval_samples=args.eval_samples, image_size=args.image_size,
                           log_every=args.log_every, eval_every=args.eval_every,
                           checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                           threads=args.threads, data_workers=args.data_workers, resume=args.resume,
                           progress=not args.no_progress)
    try:
        summary = train_uground(options, config)
    except MissingModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, held in (("held-out", summary["heldout"]), ("held-out stills", summary["heldout"].get(STILLS_KEY))):
        for variant in (MODE1, MODE3, NO_MASK_PROMPT) if held else ():
            figures = ", ".join(f"{k} {held[variant][k]:.3f}" for k in HEADLINE if held[variant][k] is not None)
            print(f"{name} {variant} after {summary['step']} steps ({held['n_expressions']} expressions): {figures}")
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `uground` to the `train` command's sub-parsers (`groundloop train uground ...`)."""
    defaults, arch = TrainOptions(), UGroundConfig()
    p = subparsers.add_parser("uground", help="train UGround (shapes-world VLM + [SEG]/[REJ] + small SAM) on the "
                                              "referring set made in memory")
    p.add_argument("--clip", default=DEFAULT_CLIP_DIR, help="the trained CLIP directory whose vision tower is used")
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help="model directory to write")
    p.add_argument("--ckpt-dir", help="resumable state and metrics (default runs/uground/<out name>)")
    p.add_argument("--init-vlm", help="start the VLM from this trained shapes-world VLM directory (e.g. "
                                      "models/vlm_shapes; its sizes replace --hidden-size/--layers/--heads)")
    p.add_argument("--init-uground", help="start from this trained UGround directory (fine-tuning, e.g. on --stills; "
                                          "words added to the vocabulary since get fresh embeddings)")
    p.add_argument("--stills", help="grounded-picking stills (groundloop sim grounded-stills) mixed into training")
    p.add_argument("--stills-share", type=float, default=defaults.stills_share,
                   help="share of the training samples drawn from --stills")
    p.add_argument("--stills-eval", help="held-out grounded-picking stills, evaluated beside the shapes-world set")
    p.add_argument("--stills-eval-expressions", type=int, default=defaults.stills_eval_expressions,
                   help="how many of the held-out stills' expressions are evaluated (the first, in file order)")
    p.add_argument("--minutes", type=float, help=f"time budget (default {DEFAULT_MINUTES:g} when --steps is not given)")
    p.add_argument("--steps", type=int, help="step budget (with --minutes: whichever comes first)")
    p.add_argument("--mode", type=int, choices=MODES, default=arch.mode,
                   help="1: last layer; 2: the policy's layer for the map, the last for SAM; 3: the policy's for both")
    p.add_argument("--last-layer-share", type=float, default=defaults.last_layer_share,
                   help="share of the budget trained in mode 1 (the last layer) before --mode: a VLM trained from "
                        "scratch has no grounding in any layer yet, and the policy locks onto the embeddings")
    p.add_argument("--reward", choices=REWARDS, default=arch.reward,
                   help="the policy's reward: the batch's summed similarity loss (the paper) or each [SEG]'s own")
    p.add_argument("--policy-weight", type=float, default=arch.policy_weight, help="weight of the REINFORCE loss")
    p.add_argument("--ce-weight", type=float, default=arch.ce_weight,
                   help="weight of the [SEG]/[REJ] answer's cross-entropy (the paper's 1)")
    p.add_argument("--pointing-weight", type=float, default=arch.pointing_weight,
                   help="weight of the softmax-over-image-tokens loss (not in the paper; 0: the paper's losses)")
    p.add_argument("--policy-init", type=float, default=arch.policy_init,
                   help="the policy's starting weights (1: the paper's ones, each layer's logit the sum of its [SEG] "
                        "state; 0: every layer equally likely)")
    p.add_argument("--hidden-size", type=int, default=arch.vlm.hidden_size, help="width of the language model")
    p.add_argument("--layers", type=int, default=arch.vlm.layers, help="language-model layers (L = layers + 1)")
    p.add_argument("--heads", type=int, default=arch.vlm.heads)
    p.add_argument("--sam-patch-size", type=int, default=arch.sam.patch_size,
                   help="SAM's patch (px): E = image / patch, mask prompts 4E on a side")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate of SAM and the heads")
    p.add_argument("--vlm-lr", type=float, help="peak learning rate of the projector and language model (default --lr)")
    p.add_argument("--half-weights", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--train-scenes", type=int, default=defaults.train_scenes, help="train-split scenes drawn from")
    p.add_argument("--eval-scenes", type=int, default=defaults.eval_scenes,
                   help="held-out scenes (all their expressions are evaluated at the end)")
    p.add_argument("--eval-samples", type=int, default=defaults.eval_samples,
                   help="held-out expressions at the periodic evaluations")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="side of the stills (px)")
    add_run_arguments(p, defaults)
    p.set_defaults(func=_run_from_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodes.uground.train uground ...`, the same as `groundloop train uground ...`."""
    return trainer_main(register, "python -m nodes.uground.train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
