"""`groundloop train vlm`: the shapes-world VLM, trained the LLaVA way on examples made in memory.

The vision tower is our trained CLIP's (--clip), frozen: it already tells the shapes apart, and a
tower trained from scratch here did not learn colour–shape binding in 30 CPU minutes
(reference/platform.md). Two stages, each a share of the budget (steps or minutes, whichever ends
first), each with a fresh AdamW, its own warm-up and cosine decay:
1. align — captions only. LLaVA trains only the projector here, against a pretrained LM; ours starts
   from random weights, so the LM trains too (a frozen random LM has no word space to align to).
2. tasks — relevance scoring, multiple-choice answers and some captions, one task per batch; the
   projector and the LM train, the vision tower too at --vision-lr > 0. Loss on answer tokens only.

Outputs: the checkpoint directory at --out (rewritten at every checkpoint, so an interrupted run
leaves a usable model; its `groundloop_vlm.json` records steps, time and the held-out metrics), and
in --ckpt-dir a resumable `latest.pt` and `metrics.jsonl`; `--resume` continues within the same
budget. Held-out metrics are teacher-forced on held-out-split scenes: the token greedy decoding
would emit at the score; for answers and captions, whether greedy decoding emits the whole target
(every token and [EOS]).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nodes.air.analysis import SCORE_HIGH, SCORE_LOW
from nodes.clip.data import Prefetcher
from nodes.clip.model import MissingModelError, require_model_dir
from nodes.clip.processing import ImagePreprocessor
from nodes.model_dir import atomic_torch_save, load_train_state, resolve_device
from nodes.shapes_vlm.config import VlmShapesConfig, image_tokens
from nodes.shapes_vlm.data import (CAPTION, IGNORE_INDEX, QA, QA_FRAMES, QA_LAYOUTS, QA_SPANS, QA_TARGETS, QA_TEXT,
                                   RELEVANCE, SCENE_SECONDS, TASKS, Batch, Encoder, ShapesTasks)
from nodes.shapes_vlm.model import (DEFAULT_CLIP_DIR, DEFAULT_MODEL_DIR, LM, PROJECTOR, VISION, build_vlm, model_parts,
                                    read_meta, save_vlm_dir)
from nodes.train_budget import add_run_arguments, budget_seconds, run_progress, trainer_main, warmup_cosine_lr
from sim.shapes_world.dataset import HELDOUT, TRAIN

if TYPE_CHECKING:
    import torch
    from transformers import LlavaForConditionalGeneration

STATE_FORMAT = "groundloop.shapes_vlm_train/1"
STATE_FILE = "latest.pt"
METRICS_FILE = "metrics.jsonl"
RUNS_DIR = Path("runs/vlm")
DEFAULT_MINUTES = 30.0
GRAD_CLIP = 1.0
POSITIVE_ABOVE = 3  # A.I.R.'s θ: a score above it keeps the frame
EVAL_SEED = 12345
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")  # the Batch fields the model reads


@dataclass(frozen=True)
class Stage:
    """One part of the recipe: what the batches teach, what learns from them, for how much of the budget."""

    name: str
    mix: dict[str, float]  # task → share of the stage's batches
    parts: tuple[str, ...]  # what trains (keys of model.model_parts); the rest is frozen
    share: float  # of the run's budget
    tune_vision: bool = False  # the vision tower trains too, at TrainOptions.vision_lr, when that is > 0


DEFAULT_STAGES = (Stage("align", {CAPTION: 1.0}, (PROJECTOR, LM), 0.3),
                  Stage("tasks", {RELEVANCE: 0.5, QA: 0.3, CAPTION: 0.2}, (PROJECTOR, LM), 0.7, tune_vision=True))


@dataclass
class TrainOptions:
    """Everything about a run that is not the network itself."""

    clip: Path = Path(DEFAULT_CLIP_DIR)
    out: Path = Path(DEFAULT_MODEL_DIR)
    ckpt_dir: Path | None = None  # default: runs/vlm/<out name>
    init: Path | None = None  # start from this VLM directory's weights (same architecture and vocabulary)
    minutes: float | None = None  # neither minutes nor steps: DEFAULT_MINUTES
    steps: int | None = None
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    batch_size: int = 32
    lr: float = 1e-3
    vision_lr: float = 0.0
    weight_decay: float = 0.01
    warmup_steps: int = 100
    train_scenes: int = 2_000
    eval_scenes: int = 100
    eval_relevance: int = 250
    eval_qa: int = 150
    eval_captions: int = 100
    frame_size: int = 224  # the shapes-world video size frames are drawn at
    qa_frames: int = QA_FRAMES
    scene_seconds: tuple[float, ...] = SCENE_SECONDS
    qa_target: str = QA_TEXT
    qa_layouts: tuple[str, ...] = (QA_SPANS,)
    log_every: int = 25
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


def stage_at(options: TrainOptions, progress: float) -> tuple[int, float]:
    """The stage a run `progress` (0..1) through is in, and how far through that stage (0..1);
    (len(stages), 1.0) once the run is done."""
    total = sum(stage.share for stage in options.stages)
    start = 0.0
    for i, stage in enumerate(options.stages):
        end = start + stage.share / total
        if progress < end - 1e-9:
            return i, (progress - start) / (end - start)
        start = end
    return len(options.stages), 1.0


def prepare_stage(model: "LlavaForConditionalGeneration", stage: Stage,
                  options: TrainOptions) -> "torch.optim.Optimizer":
    """Freeze every part the stage does not train; AdamW over the rest, each group's peak lr in 'peak_lr'."""
    import torch

    parts = model_parts(model)
    rates = {name: options.lr for name in stage.parts}
    if stage.tune_vision and options.vision_lr > 0.0:
        rates[VISION] = options.vision_lr
    for name, module in parts.items():
        module.requires_grad_(name in rates)
    groups = []
    for name, peak in rates.items():
        params = list(parts[name].parameters())
        matrices, vectors = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
        groups += [{"params": matrices, "weight_decay": options.weight_decay, "peak_lr": peak},
                   {"params": vectors, "weight_decay": 0.0, "peak_lr": peak}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=options.lr, betas=(0.9, 0.98))


def to_device(batch: Batch, device: "torch.device") -> dict[str, "torch.Tensor"]:
    import torch

    return {key: torch.from_numpy(getattr(batch, key)).to(device) for key in MODEL_INPUTS}


def train_step(model: "LlavaForConditionalGeneration", batch: Batch, optimizer: "torch.optim.Optimizer",
               device: "torch.device") -> "torch.Tensor":
    """One optimiser step on the answer tokens' cross-entropy; the loss, detached."""
    import torch

    labels = torch.from_numpy(batch.labels).to(device)  # (B, T)
    loss = model(**to_device(batch, device), labels=labels).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], GRAD_CLIP)
    optimizer.step()
    return loss.detach()


@dataclass
class Tally:
    """Teacher-forced predictions over held-out batches, turned into the reported metrics."""

    score_digits: list[int]  # token ids of "1".."5"
    scores: list[tuple[int, int, float]] = field(default_factory=list)  # (truth, predicted or 0, P(score > θ))
    answers: list[bool] = field(default_factory=list)
    captions: list[bool] = field(default_factory=list)

    def add(self, batch: Batch, logits: "torch.Tensor") -> None:
        import torch

        predicted = logits.argmax(-1).cpu().numpy()  # (B, T): the token after each position
        for row in range(len(batch.labels)):
            positions = np.flatnonzero(batch.labels[row] != IGNORE_INDEX)
            truth, guess = batch.labels[row, positions], predicted[row, positions - 1]  # (A,)
            whole = bool((truth == guess).all())  # greedy decoding would emit the whole target
            if batch.task == CAPTION:
                self.captions.append(whole)
            elif batch.task == QA:
                self.answers.append(whole)
            else:
                at = positions[np.isin(truth, self.score_digits).argmax()] - 1
                digits = torch.softmax(logits[row, at, self.score_digits].float(), -1).cpu().numpy()  # (5,)
                token = int(predicted[row, at])
                score = SCORE_LOW + self.score_digits.index(token) if token in self.score_digits else 0
                p_positive = float(digits[POSITIVE_ABOVE - SCORE_LOW + 1:].sum())
                self.scores.append((int(batch.truths[row]), score, p_positive))

    def metrics(self) -> dict[str, Any]:
        from sklearn.metrics import roc_auc_score

        out: dict[str, Any] = {}
        if self.scores:
            truth, guess, p_positive = (np.array(column) for column in zip(*self.scores))
            positive = truth > POSITIVE_ABOVE
            out.update(relevance_exact=float((truth == guess).mean()),
                       relevance_within1=float(((guess > 0) & (np.abs(truth - guess) <= 1)).mean()),
                       relevance_positive_auc=float(roc_auc_score(positive, p_positive))
                       if 0 < positive.sum() < len(positive) else None,
                       relevance_predicted={str(s): int((guess == s).sum()) for s in range(SCORE_HIGH + 1)},
                       relevance_n=len(truth))
        if self.answers:
            out.update(qa_accuracy=float(np.mean(self.answers)), qa_n=len(self.answers))
        if self.captions:
            out.update(caption_exact=float(np.mean(self.captions)), caption_n=len(self.captions))
        return out


def evaluate(model: "LlavaForConditionalGeneration", encoder: Encoder, tasks: ShapesTasks, options: TrainOptions,
             device: "torch.device") -> dict[str, Any]:
    """Held-out metrics on the same examples every time (a fixed seed): relevance exact / within ±1 /
    AUC of P(score > θ) for truly positive frames, QA accuracy, caption exact match."""
    import torch

    tally = Tally(encoder.tokenizer.convert_tokens_to_ids([str(s) for s in range(SCORE_LOW, SCORE_HIGH + 1)]))
    rng = np.random.default_rng(EVAL_SEED)
    model.eval()
    with torch.no_grad():
        for task, n in ((RELEVANCE, options.eval_relevance), (QA, options.eval_qa), (CAPTION, options.eval_captions)):
            for start in range(0, n, options.batch_size):
                batch = encoder.batch([tasks.sample(task, rng) for _ in range(min(options.batch_size, n - start))])
                tally.add(batch, model(**to_device(batch, device)).logits)  # logits (B, T, V)
    model.train()
    return tally.metrics()


def load_init_weights(model: "LlavaForConditionalGeneration", directory: Path) -> None:
    """Copy a trained VLM's weights into `model`; a different vocabulary or shape is an error naming both."""
    from transformers import LlavaForConditionalGeneration

    trained = LlavaForConditionalGeneration.from_pretrained(directory, local_files_only=True).state_dict()
    mismatched = sorted(k for k, v in model.state_dict().items() if k not in trained or trained[k].shape != v.shape)
    if mismatched:
        raise ValueError(f"--init {directory}: its weights do not fit this VLM (vocabulary or architecture differ): "
                         f"{', '.join(mismatched[:5])}")
    model.load_state_dict(trained)


def _batch_maker(tasks: ShapesTasks, encoder: Encoder, stage: Stage,
                 size: int) -> Callable[[np.random.Generator], Batch]:
    """Batches of one task each, the task drawn by the stage's mix."""
    names, weights = list(stage.mix), np.array(list(stage.mix.values()), np.float64)

    def make(rng: np.random.Generator) -> Batch:
        task = names[rng.choice(len(names), p=weights / weights.sum())]
        return encoder.batch([tasks.sample(task, rng) for _ in range(size)])

    return make


def train_vlm(options: TrainOptions, config: VlmShapesConfig | None = None) -> dict[str, Any]:
    """Train (or resume) and write the checkpoint directory; the run's summary with the held-out metrics.
    A missing CLIP directory is a MissingModelError naming `groundloop train clip`."""
    import torch
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per checkpoint save would break up the training bar
    device = resolve_device(options.device)
    torch.set_num_threads(options.threads)
    state = load_train_state(options.run_dir / STATE_FILE, options.resume, STATE_FORMAT, "VLM")
    if state is not None:
        config = VlmShapesConfig.from_dict(state["config"])
    elif options.init is not None:
        config = VlmShapesConfig.from_dict(read_meta(require_model_dir(options.init))["config"])
    else:
        config = config or VlmShapesConfig()
    torch.manual_seed(options.seed)
    model, processor = build_vlm(options.clip, config)
    if state is None and options.init is not None:
        load_init_weights(model, options.init)
    encoder = Encoder(processor, image_tokens(model.config.vision_config), ImagePreprocessor.from_dir(options.clip))
    step, stage_index, stage_start, elapsed_s, curve, last_eval = 0, 0, 0, 0.0, [], {}
    if state is not None:
        model.load_state_dict(state["model"])
        step, stage_index, stage_start = state["step"], state["stage"], state["stage_start"]
        elapsed_s, curve, last_eval = state["elapsed_s"], state["curve"], state["heldout"]
    model.to(device).train()
    train_tasks = ShapesTasks(TRAIN, options.train_scenes, options.frame_size, options.qa_frames,
                              scene_seconds=options.scene_seconds, qa_target=options.qa_target,
                              qa_layouts=options.qa_layouts)
    eval_tasks = ShapesTasks(HELDOUT, options.eval_scenes, options.frame_size, options.qa_frames,
                             scene_seconds=options.scene_seconds, qa_target=options.qa_target,
                             qa_layouts=options.qa_layouts)
    options.run_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    minutes = "-" if options.budget_s is None else f"{options.budget_s / 60:.1f} min"
    print(f"vlm: {n_params / 1e6:.2f}M parameters, batch {options.batch_size}, device {device}, {options.threads} "
          f"threads; budget {options.steps or '-'} steps / {minutes}; from step {step}")
    optimizer: torch.optim.Optimizer | None = None
    batches: Prefetcher | None = None

    def checkpoint(final: bool) -> None:
        meta = {"train": {"step": step, "elapsed_s": round(elapsed_s, 1), "final": final, "device": str(device),
                          "parameters": n_params, "clip": str(options.clip), "batch_size": options.batch_size,
                          "init": str(options.init) if options.init is not None else None,
                          "stages": [asdict(stage) for stage in options.stages],
                          "split": {"train": TRAIN, "heldout": HELDOUT}, "seed": options.seed,
                          "scene_seconds": list(options.scene_seconds), "qa_target": options.qa_target,
                          "qa_layouts": list(options.qa_layouts)},
                "heldout": last_eval}
        save_vlm_dir(model, processor, config, options.out, meta)
        atomic_torch_save({"format": STATE_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict() if optimizer is not None else None, "step": step,
                            "stage": stage_index, "stage_start": stage_start, "elapsed_s": elapsed_s, "curve": curve,
                            "heldout": last_eval}, options.run_dir / STATE_FILE)

    def log(row: dict[str, Any]) -> None:
        curve.append(row)
        with open(options.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    bar = tqdm(total=options.steps, initial=step, desc="vlm", unit="step", disable=not options.progress)
    losses: dict[str, list[torch.Tensor]] = {}
    try:
        resumed_at, started = elapsed_s, time.monotonic()
        while True:
            current, stage_progress = stage_at(options, run_progress(step, elapsed_s, options.steps, options.budget_s))
            if current >= len(options.stages):
                break
            if optimizer is None or current != stage_index:
                if current != stage_index:  # a new stage: fresh optimiser, its own warm-up
                    stage_index, stage_start, state = current, step, None
                stage = options.stages[stage_index]
                optimizer = prepare_stage(model, stage, options)
                if state is not None and state["optimizer"] is not None:  # resumed inside the stage it stopped in
                    optimizer.load_state_dict(state["optimizer"])
                if batches is not None:
                    batches.close()
                make = _batch_maker(train_tasks, encoder, stage, options.batch_size)
                batches = Prefetcher(make, seed=options.seed * 1_000_003 + step,  # a resumed run draws new batches
                                     workers=options.data_workers)
                bar.set_description(f"vlm {stage.name}")
            batch = batches.next()
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(group["peak_lr"], options.warmup_steps, step - stage_start, stage_progress)
            losses.setdefault(batch.task, []).append(train_step(model, batch, optimizer, device))
            step += 1
            elapsed_s = resumed_at + time.monotonic() - started
            bar.update(1)
            done = run_progress(step, elapsed_s, options.steps, options.budget_s) >= 1.0
            if step % options.log_every == 0 or done:
                row: dict[str, Any] = {"step": step, "stage": options.stages[stage_index].name,
                                       "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(elapsed_s, 1),
                                       **{f"loss_{task}": torch.stack(v).mean().item() for task, v in losses.items()}}
                losses = {}
                if step % options.eval_every == 0 or done:
                    last_eval = {**evaluate(model, encoder, eval_tasks, options, device), "step": step}
                    row.update({f"heldout_{k}": v for k, v in last_eval.items() if isinstance(v, float)})
                log(row)
                bar.set_postfix({k: f"{v:.3f}" for k, v in row.items()
                                 if k.startswith(("loss_", "heldout_r", "heldout_q")) and isinstance(v, float)})
            if step % options.checkpoint_every == 0 and not done:
                checkpoint(final=False)
    finally:
        if batches is not None:
            batches.close()
        bar.close()
    if not last_eval or last_eval["step"] != step:  # a budget spent before this run took a step
        last_eval = {**evaluate(model, encoder, eval_tasks, options, device), "step": step}
    checkpoint(final=True)
    return {"out": str(options.out), "step": step, "elapsed_s": round(elapsed_s, 1), "parameters": n_params,
            "heldout": last_eval}


def parse_mix(text: str) -> dict[str, float]:
    """"relevance=0.5,qa=0.3,caption=0.2" → {task: share}; an unknown task or a share ≤ 0 is an error."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, share = item.partition("=")
        try:
            mix[task.strip()] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--task-mix: {item!r} is not task=share") from None
    unknown = sorted(set(mix) - set(TASKS))
    if not mix or unknown or min(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"--task-mix: {text!r} needs task=share pairs with shares > 0, "
                                         f"tasks from {', '.join(TASKS)}")
    return mix


def _options_from_args(args: argparse.Namespace) -> TrainOptions:
    align, tasks = DEFAULT_STAGES
    stages = (replace(align, share=args.align_share), replace(tasks, mix=args.task_mix, share=1.0 - args.align_share))
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else None
    init = Path(args.init) if args.init else None
    return TrainOptions(clip=Path(args.clip), out=Path(args.out), ckpt_dir=ckpt_dir, init=init, minutes=args.minutes,
                        steps=args.steps, stages=stages, batch_size=args.batch_size, lr=args.lr,
                        vision_lr=args.vision_lr, train_scenes=args.train_scenes, eval_scenes=args.eval_scenes,
                        eval_relevance=args.eval_relevance, eval_qa=args.eval_qa, eval_captions=args.eval_captions,
                        frame_size=args.frame_size, qa_frames=args.qa_frames,
                        scene_seconds=tuple(float(v) for v in args.scene_seconds.split(",")), qa_target=args.qa_target,
                        qa_layouts=tuple(args.qa_layouts.split(",")), log_every=args.log_every,
                        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                        device=args.device, threads=args.threads, data_workers=args.data_workers,
                        resume=args.resume, progress=not args.no_progress)


def _run_from_args(args: argparse.Namespace) -> int:
    config = VlmShapesConfig(hidden_size=args.hidden_size, layers=args.layers, heads=args.heads, kv_heads=args.heads)
    try:
        summary = train_vlm(_options_from_args(args), config)
    except MissingModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    held = {key: summary["heldout"].get(key, float("nan"))
            for key in ("relevance_exact", "relevance_within1", "qa_accuracy", "caption_exact")}
    print(f"held-out after {summary['step']} steps: relevance exact {held['relevance_exact']:.3f}, within ±1 "
          f"{held['relevance_within1']:.3f}; QA accuracy {held['qa_accuracy']:.3f} (chance 0.25); caption exact "
          f"{held['caption_exact']:.3f}")
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `vlm` to the `train` command's sub-parsers (`groundloop train vlm ...`)."""
    defaults, arch = TrainOptions(), VlmShapesConfig()
    p = subparsers.add_parser("vlm", help="train the shapes-world VLM (LLaVA-style, on our CLIP) on examples made "
                                          "in memory")
    p.add_argument("--clip", default=DEFAULT_CLIP_DIR, help="the trained CLIP directory whose vision tower is used")
    p.add_argument("--out", default=DEFAULT_MODEL_DIR, help="checkpoint directory to write")
    p.add_argument("--init", help="start from this trained VLM directory (its architecture; use --align-share 0)")
    p.add_argument("--ckpt-dir", help="resumable state and metrics (default runs/vlm/<out name>)")
    p.add_argument("--minutes", type=float, help=f"time budget (default {DEFAULT_MINUTES:g} when --steps is not given)")
    p.add_argument("--steps", type=int, help="step budget (with --minutes: whichever comes first)")
    p.add_argument("--align-share", type=float, default=DEFAULT_STAGES[0].share,
                   help="share of the budget for stage 1 (captions); stage 2 (tasks) gets the rest")
    p.add_argument("--task-mix", type=parse_mix, default=dict(DEFAULT_STAGES[1].mix),
                   help="stage 2's share of each task's batches, e.g. relevance=0.5,qa=0.3,caption=0.2")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak lr of the projector and the language model")
    p.add_argument("--vision-lr", type=float, default=defaults.vision_lr,
                   help="stage 2 lr of the vision tower (0: frozen)")
    p.add_argument("--train-scenes", type=int, default=defaults.train_scenes, help="train-split scenes drawn from")
    p.add_argument("--eval-scenes", type=int, default=defaults.eval_scenes, help="held-out scenes drawn from")
    p.add_argument("--eval-relevance", type=int, default=defaults.eval_relevance, help="held-out relevance examples")
    p.add_argument("--eval-qa", type=int, default=defaults.eval_qa, help="held-out questions")
    p.add_argument("--eval-captions", type=int, default=defaults.eval_captions, help="held-out caption examples")
    p.add_argument("--frame-size", type=int, default=defaults.frame_size, help="side of the frames drawn (px)")
    p.add_argument("--qa-frames", type=int, default=defaults.qa_frames, help="frames per question")
    p.add_argument("--scene-seconds", default=",".join(f"{v:g}" for v in defaults.scene_seconds),
                   help="comma-separated scene lengths, one drawn per scene by its seed")
    p.add_argument("--qa-target", choices=QA_TARGETS, default=defaults.qa_target,
                   help="a question's answer: the right option's text, or its letter")
    p.add_argument("--qa-layouts", default=",".join(defaults.qa_layouts),
                   help=f"comma-separated layouts of a question's frames, one drawn per example: {', '.join(QA_LAYOUTS)} "
                        "(nodes/shapes_vlm/data.py)")
    p.add_argument("--hidden-size", type=int, default=arch.hidden_size, help="width of the language model")
    p.add_argument("--layers", type=int, default=arch.layers, help="language-model layers")
    p.add_argument("--heads", type=int, default=arch.heads)
    add_run_arguments(p, defaults)
    p.set_defaults(func=_run_from_args)


def main(argv: list[str] | None = None) -> int:
    """`python -m nodes.shapes_vlm.train vlm ...`, the same as `groundloop train vlm ...`."""
    return trainer_main(register, "python -m nodes.shapes_vlm.train", argv)


if __name__ == "__main__":
    raise SystemExit(main())
