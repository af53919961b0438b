"""Referring segmentation on held-out shapes-world stills (sim/shapes_world/referring.py), part by part.

Each part is one function that measures one method on the same held-out stills and returns its figures;
the JSON on the last line holds one key per part. Parts:
- kv_probe (`--probe-only` runs just this): the visual-KV probe (nodes/kv_probe, reference/papers.md §7)
  on the VLM's per-layer image value tokens — the per-layer curve, with and without input-agnostic key
  blocking (keys found on train-split stills), with and without a text prefix before the image
  (--prefix: the expression itself, or a fixed text).
- uground (`--uground-only` runs just this): the trained UGround (nodes/uground, reference/papers.md §2),
  read the three ways of the paper's ablation in miniature — mode 1 (the last layer's [SEG]), mode 3 (the
  layer policy's most probable layer) and no mask prompt (mode 1 with SAM's no-mask embedding) — through
  the trainer's own inference and metrics (`nodes.uground.evaluate`, gRefCOCO's rules: an empty target
  scores 1 when answered empty; empty-target and target accuracy); beside them the floor of a model that
  never rejects and covers every shape, SAM's mask with each layer's [SEG] on its own, the similarity map
  of each layer thresholded at 0.5 against the target (empty targets skipped), and the layers the policy
  picks over all expressions (whether the model then answers [SEG] or [REJ]).
- picking (`--picking-only` runs just this): the same UGround on held-out camera stills of the grounded-
  picking task (GroundedPickCube-v1, `groundloop sim grounded-stills`: the workspace crop at 128 px, every
  palette colour asked as "the <colour> cube" — absent ones must be rejected — and "all cubes"), mode 1 /
  mode 3 / no mask prompt beside the HSV colour baseline of nodes.grounding (which has no notion of "all").
  The stills are generated once into --picking-stills (held-out seeds, deterministic) and reused.

Metrics. Per expression, IoU of the predicted and target masks. gIoU: the mean IoU over expressions
(LISA/UGround's gIoU; "mIoU" here); cIoU: total intersection / total union. The probe cannot reject
(every map has a maximum), so empty-target expressions are counted but not scored. The baseline is
the floor any map must beat: the whole image as the mask (IoU = target area share). The grid oracle is
the ceiling of a T-token map: the target's own per-token coverage through the same resize and threshold.
Threshold-free: token AUC of the raw dot products, target tokens (cells ≥ 25 % covered by the target)
against every other token, and against tokens of the other shapes only — above 0.5 against other shapes
is what referring needs; against everything, telling shapes from background is enough. Masks threshold
each min–max map at 0.5 (zero-shot), and at the per-layer threshold that maximises gIoU on train stills.

    python benchmarks/grounding.py [--quick] [--probe-only | --uground-only | --picking-only] [--vlm DIR]
                                   [--uground DIR] [--stills N] [--prefix expression|TEXT]

A table per part, then one JSON object with every figure as the last line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from nodes.kv_probe import KvProbe
    from nodes.uground.data import ReferringSample, UGroundEncoder
    from nodes.uground.model import UGroundModel

KV_PROBE, UGROUND, PICKING = "kv_probe", "uground", "picking"
DEFAULT_VLM = "models/vlm_shapes"
DEFAULT_UGROUND = "models/uground_shapes"
UGROUND_BATCH = 16  # expressions per VLM pass (the trainer's batch)
ALL_SHAPES = "all_shapes"  # the floor: every shape as the mask, never [REJ]
DEFAULT_STILLS, QUICK_STILLS = 100, 25  # held-out stills
DEFAULT_TRAIN_STILLS, QUICK_TRAIN_STILLS = 30, 10  # train stills, to choose the per-layer threshold
DEFAULT_CALIBRATION, QUICK_CALIBRATION = 64, 32  # train stills, to find the input-agnostic keys
HELDOUT_START = 0  # the referring set's own seed split: every fifth seed is held out
TRAIN_START = 100_000  # train stills for thresholds and calibration, far from the held-out seeds
PREFIX_EXPRESSION = "expression"  # --prefix: the expression itself before the image
ZERO_SHOT_THRESHOLD = 0.5
THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 2)  # the train-split search
TOKEN_POSITIVE = 0.25  # a token is the target's when the target covers this share of its cell
PLAIN, BLOCKED, PREFIX, PREFIX_BLOCKED = "plain", "blocked", "prefix", "prefix_blocked"
CONDITIONS = {PLAIN: (False, False), BLOCKED: (False, True), PREFIX: (True, False), PREFIX_BLOCKED: (True, True)}
EXIT_MISSING_MODEL = 2
DEFAULT_PICKING_STILLS = "runs/benchmarks/grounded_stills_heldout"
DEFAULT_PICKING_SEEDS, QUICK_PICKING_SEEDS = 60, 15  # held-out task seeds, 3 stills each
COLOUR_BASELINE = "colour_baseline"


@dataclass
class Still:
    """One referring still: its image, instance masks and expressions (text, kind, target mask)."""

    seed: int
    image: np.ndarray  # (H, W, 3) uint8
    instances: np.ndarray  # (N, H, W) bool
    expressions: list[tuple[str, str, np.ndarray]]  # (text, kind, target (H, W) bool)


def referring_stills(split: str, n: int, start: int) -> list[Still]:
    """`n` stills of `split`, made in memory from their seeds."""
    from sim.shapes_world.dataset import seeds_for
    from sim.shapes_world.referring import make_expressions, make_scene

    stills = []
    for seed in seeds_for(split, n, start):
        scene = make_scene(seed)
        expressions = [(e.text, e.kind, scene.target_mask(e.targets)) for e in make_expressions(scene)]
        stills.append(Still(seed, scene.image(), scene.instance_masks(), expressions))
    return stills


def iou(masks: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., H, W) bool masks against (H, W): intersections and unions, (...) each."""
    return (masks & target).sum((-2, -1)), (masks | target).sum((-2, -1))


def summarise_ious(inter: np.ndarray, union: np.ndarray) -> dict[str, Any]:
    """(E, ...) intersections and unions of E expressions → gIoU and cIoU, (...) each, as lists."""
    giou = (inter / np.maximum(union, 1)).mean(0)
    ciou = inter.sum(0) / np.maximum(union.sum(0), 1)
    return {"giou": np.round(giou, 4).tolist(), "ciou": np.round(ciou, 4).tolist()}


def token_auc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """(L, T) scores → (L,) AUC of positive against negative tokens (NaN when either set is empty)."""
    pos, neg = scores[:, positive], scores[:, negative]  # (L, P), (L, N)
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        return np.full(scores.shape[0], np.nan)
    diff = pos[:, :, None] - neg[:, None, :]  # (L, P, N)
    return (diff > 0).mean((1, 2)) + 0.5 * (diff == 0).mean((1, 2))


def cell_coverage(mask: np.ndarray, box: Any, grid_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool → (T,): the share of each grid cell's pixels inside the mask (the box the grid covers)."""
    import torch
    import torch.nn.functional as F

    crop = torch.from_numpy(mask[box.top: box.top + box.height, box.left: box.left + box.width]).float()
    return F.adaptive_avg_pool2d(crop[None, None], grid_hw).flatten().numpy()  # (T,)


@dataclass
class ProbeRecord:
    """One expression under one condition: IoU parts per layer and threshold, and token AUCs."""

    kind: str
    inter: np.ndarray  # (K, L) per threshold of THRESHOLDS and layer
    union: np.ndarray  # (K, L)
    auc_all: np.ndarray  # (L,)
    auc_objects: np.ndarray  # (L,)


def probe_expression(probe: "KvProbe", still: Still, text: str, target: np.ndarray, prefix: str | None,
                     blocked: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU parts (K, L) over THRESHOLDS and the two token AUCs (L,) of one expression."""
    from nodes.kv_probe import probe_maps, probe_scores

    result = probe.run(still.image, text, prefix=prefix, blocked=blocked)
    maps = probe_maps(result).numpy()  # (L, H, W)
    inter, union = iou(maps[None] >= THRESHOLDS[:, None, None, None], target)  # (K, L)
    scores = probe_scores(result).numpy()  # (L, T)
    box, grid = result.inputs.box, result.inputs.grid_hw
    target_cells = cell_coverage(target, box, grid) >= TOKEN_POSITIVE
    others = cell_coverage(still.instances.any(0) & ~target, box, grid) >= TOKEN_POSITIVE
    auc_all = token_auc(scores, target_cells, ~target_cells)
    return inter, union, auc_all, token_auc(scores, target_cells, others & ~target_cells)


def run_condition(probe: "KvProbe", stills: list[Still], use_prefix: bool, fixed_prefix: str | None,
                  blocked: Any) -> list[ProbeRecord]:
    records = []
    for still in stills:
        for text, kind, target in still.expressions:
            if not target.any():
                continue  # the probe cannot reject: empty targets are counted, not scored
            prefix = (fixed_prefix or text) if use_prefix else None
            records.append(ProbeRecord(kind, *probe_expression(probe, still, text, target, prefix, blocked)))
    return records


def floor_and_ceiling(probe: "KvProbe", stills: list[Still]) -> dict[str, float]:
    """The whole-image mask (floor) and the grid oracle at the zero-shot threshold (ceiling), as gIoU."""
    import torch

    from nodes.kv_probe.probe import paste
    from nodes.sam.similarity import grid_to_image, minmax

    inputs = probe.layout.build(stills[0].image, "")
    box, grid = inputs.box, inputs.grid_hw
    floor, ceiling = [], []
    for still in stills:
        for _, _, target in still.expressions:
            if target.any():
                floor.append(target.mean())
                cover = minmax(torch.from_numpy(cell_coverage(target, box, grid))[None])  # (1, T)
                oracle = paste(grid_to_image(cover, grid, (box.height, box.width)), box, inputs.image_hw)[0].numpy()
                i, u = iou(oracle >= ZERO_SHOT_THRESHOLD, target)
                ceiling.append(i / max(u, 1))
    return {"whole_image_giou": round(float(np.mean(floor)), 4), "grid_oracle_giou": round(float(np.mean(ceiling)), 4)}


def summarise_condition(records: list[ProbeRecord], train: list[ProbeRecord]) -> dict[str, Any]:
    """Per-layer curves: zero-shot and train-threshold gIoU/cIoU, token AUCs, gIoU per expression kind."""
    zero = int(np.flatnonzero(THRESHOLDS == ZERO_SHOT_THRESHOLD)[0])
    inter, union = np.stack([r.inter for r in records]), np.stack([r.union for r in records])  # (E, K, L)
    train_giou = np.stack([r.inter / np.maximum(r.union, 1) for r in train]).mean(0)  # (K, L)
    best = train_giou.argmax(0)  # (L,) threshold index per layer
    layers = np.arange(inter.shape[2])
    chosen_inter, chosen_union = inter[:, best, layers], union[:, best, layers]  # (E, L)
    by_kind = {}
    for kind in sorted({r.kind for r in records}):
        rows = [i for i, r in enumerate(records) if r.kind == kind]
        by_kind[kind] = {"n": len(rows), **summarise_ious(chosen_inter[rows], chosen_union[rows])}
    return {"n": len(records), "zero_shot": summarise_ious(inter[:, zero], union[:, zero]),
            "train_threshold": {"threshold": THRESHOLDS[best].tolist(), **summarise_ious(chosen_inter, chosen_union)},
            "auc_all": np.round(np.nanmean([r.auc_all for r in records], 0), 4).tolist(),
            "auc_objects": np.round(np.nanmean([r.auc_objects for r in records], 0), 4).tolist(),
            "by_kind_train_threshold": by_kind}


def unknown_word_share(probe: "KvProbe", stills: list[Still]) -> dict[str, float]:
    """Per expression kind, the share of expressions with a word the tokenizer does not know."""
    tokenizer = probe.layout.tokenizer
    unknown: dict[str, list[bool]] = {}
    for still in stills:
        for text, kind, _ in still.expressions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            unknown.setdefault(kind, []).append(tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids)
    return {kind: round(float(np.mean(flags)), 3) for kind, flags in sorted(unknown.items())}


@dataclass
class Settings:
    vlm: str
    uground: str
    device: str
    stills: int
    train_stills: int
    calibration: int
    prefix: str
    picking_stills: str = DEFAULT_PICKING_STILLS
    picking_seeds: int = DEFAULT_PICKING_SEEDS


def kv_probe_part(settings: Settings) -> dict[str, Any]:
    """The probe's per-layer curves under the four conditions, with the floor, ceiling and ratios."""
    from nodes.kv_probe import KvProbe
    from nodes.vlm.hf import HfVlmAdapter
    from sim.shapes_world.dataset import HELDOUT, TRAIN

    probe = KvProbe(HfVlmAdapter(settings.vlm, device=settings.device))
    heldout = referring_stills(HELDOUT, settings.stills, HELDOUT_START)
    train = referring_stills(TRAIN, max(settings.train_stills, settings.calibration), TRAIN_START)
    blocked = probe.calibrate_blocking([still.image for still in train[: settings.calibration]])
    train = train[: settings.train_stills]
    fixed_prefix = None if settings.prefix == PREFIX_EXPRESSION else settings.prefix
    conditions = {}
    for name, (use_prefix, use_blocking) in CONDITIONS.items():
        keys = blocked if use_blocking else None
        conditions[name] = summarise_condition(run_condition(probe, heldout, use_prefix, fixed_prefix, keys),
                                               run_condition(probe, train, use_prefix, fixed_prefix, keys))
    bounds = floor_and_ceiling(probe, heldout)
    curve = np.array(conditions[PLAIN]["train_threshold"]["giou"])
    best = int(curve.argmax())
    ratios = {f"{name}_over_plain_best_layer": round(float(max(c["train_threshold"]["giou"]) / max(curve.max(), 1e-9)), 3)
              for name, c in conditions.items() if name != PLAIN}
    n_expressions = sum(len(s.expressions) for s in heldout)
    return {"vlm": settings.vlm, "stills": settings.stills, "seeds": [s.seed for s in heldout],
            "expressions": n_expressions, "scored": conditions[PLAIN]["n"],
            "empty_skipped": n_expressions - conditions[PLAIN]["n"], "prefix": settings.prefix,
            "layers": probe.n_layers, "grid_tokens": int(blocked.variance.shape[1]),
            "blocked_keys": blocked.to_json(), "unknown_word_share": unknown_word_share(probe, heldout),
            **bounds, "conditions": conditions, "best_layer_plain": best,
            "plain_best_over_whole_image": round(float(curve.max() / max(bounds["whole_image_giou"], 1e-9)), 3),
            **ratios}


def print_kv_probe(report: dict[str, Any]) -> None:
    c = report["conditions"]
    print(f"\nKV probe — {report['vlm']}: {report['stills']} held-out stills, {report['scored']} expressions "
          f"with a target ({report['empty_skipped']} empty-target skipped: the probe cannot reject); "
          f"prefix: {report['prefix']}")
    keys = report["blocked_keys"]
    for layer, cells in keys["layers"].items():
        scores = keys["blocked_variance"][layer]
        print(f"blocked in layer {layer}: grid cells {cells}, relative key variance {min(scores):.2f}–{max(scores):.2f} "
              f"(layer median {keys['median_variance'][int(layer)]:.2f}; {keys['n_images']} train stills)")
    tables = [("gIoU, zero-shot threshold 0.5", lambda n: c[n]["zero_shot"]["giou"]),
              ("gIoU, per-layer threshold chosen on train stills", lambda n: c[n]["train_threshold"]["giou"]),
              ("cIoU, per-layer threshold chosen on train stills", lambda n: c[n]["train_threshold"]["ciou"]),
              ("token AUC, target vs other shapes (0.5 = no referring signal)", lambda n: c[n]["auc_objects"]),
              ("token AUC, target vs all other tokens", lambda n: c[n]["auc_all"])]
    for title, column in tables:
        print(f"\n{title}\n{'layer':>5}" + "".join(f"{name:>16}" for name in CONDITIONS))
        for layer in range(report["layers"]):
            print(f"{layer:>5}" + "".join(f"{column(name)[layer]:>16.3f}" for name in CONDITIONS))
    print(f"\nfloor (whole image as mask) gIoU {report['whole_image_giou']:.3f}; ceiling (grid oracle, "
          f"{report['grid_tokens']} tokens) gIoU {report['grid_oracle_giou']:.3f}; best plain layer "
          f"{report['best_layer_plain']}: ×{report['plain_best_over_whole_image']:.2f} the floor")
    print("best-layer gIoU over plain: " + ", ".join(f"{k.split('_over')[0]} ×{v:.2f}" for k, v in report.items()
                                                      if k.endswith("_over_plain_best_layer")))
    print(f"expressions with a word the tokenizer lacks, by kind: {report['unknown_word_share']}")


def rounded(value: Any) -> Any:
    """Floats in nested dicts and lists to 4 places, for the JSON line."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def referring_samples(stills: list[Still]) -> list["ReferringSample"]:
    """Every expression of the stills as UGround's samples, in still order."""
    from nodes.uground.data import ReferringSample

    return [ReferringSample(still.image, text, target, kind, still.seed)
            for still in stills for text, kind, target in still.expressions]


def all_shapes_floor(stills: list[Still]) -> dict[str, Any]:
    """The metrics of a model that answers every expression with every shape (never [REJ])."""
    from nodes.uground.evaluate import Prediction, Tally

    tally = Tally()
    for still in stills:
        shapes = still.instances.any(0)
        for _, kind, target in still.expressions:
            tally.add(Prediction(shapes, present=True, p_seg=1.0), target, kind)
    return tally.metrics()


@dataclass
class LayerReadings:
    """Per expression, what each layer says before SAM, and where the policy would look."""

    inter: np.ndarray  # (E_t, L) similarity map ≥ 0.5 against the target, expressions with a target only
    union: np.ndarray  # (E_t, L)
    policy_layers: np.ndarray  # (E,) the policy's most probable layer, every expression
    policy_probs: np.ndarray  # (E, L)


def layer_readings(model: "UGroundModel", encoder: "UGroundEncoder", samples: list["ReferringSample"],
                   device: "torch.device") -> LayerReadings:
    """One VLM pass per batch: every layer's similarity map (as the model makes it for SAM, in the image
    frame) thresholded against the target, and the policy's choice for every expression."""
    import torch

    from nodes.sam.similarity import similarity_maps
    from nodes.uground.config import MODE_POLICY
    from nodes.uground.model import to_inputs

    inter, union, layers, probs = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(samples), UGROUND_BATCH):
            part = samples[start: start + UGROUND_BATCH]
            batch = encoder.batch(part)
            inputs = to_inputs(batch, device)
            reading = model.read(inputs["input_ids"], inputs["attention_mask"], inputs["clip_pixels"],
                                 inputs["seg_positions"])
            choice, _ = model.layers(reading.seg_states, MODE_POLICY, sample=False)
            layers.append(choice.layers.cpu().numpy())
            probs.append(choice.probs.cpu().numpy())
            rows = np.flatnonzero(batch.has_target)
            if not len(rows):
                continue
            seg, images = reading.seg_states[rows], reading.image_states[rows]  # (N, L, D), (N, L, P, D)
            n, n_layers = seg.shape[:2]
            maps = similarity_maps(seg.flatten(0, 1), images.flatten(0, 1), model.grid, batch.image_hw,
                                   prompt_size=model.config.sam.mask_prompt_size, canvas=model.clip_side)
            masks = (maps.image >= ZERO_SHOT_THRESHOLD).view(n, n_layers, *batch.image_hw).cpu().numpy()
            for mask, row in zip(masks, rows):
                i, u = iou(mask, part[row].target)
                inter.append(i)
                union.append(u)
    return LayerReadings(np.array(inter), np.array(union), np.concatenate(layers), np.concatenate(probs))


def uground_part(settings: Settings) -> dict[str, Any]:
    """Mode 1 / mode 3 / no mask prompt with the all-shapes floor, per-layer similarity-map and SAM-mask
    IoU, and the policy's layer distribution, on every expression of the held-out stills."""
    from nodes.uground.evaluate import DEFAULT_VARIANTS, MODE1, evaluate, layer_variants
    from nodes.uground.model import load_uground
    from nodes.model_dir import resolve_device
    from sim.shapes_world.dataset import HELDOUT

    device = resolve_device(settings.device)
    model, encoder = load_uground(settings.uground, device)
    n_layers = model.config.num_layers
    stills = referring_stills(HELDOUT, settings.stills, HELDOUT_START)
    samples = referring_samples(stills)
    per_layer = layer_variants(n_layers)
    metrics = evaluate(model, encoder, samples, device, batch_size=UGROUND_BATCH, variants=DEFAULT_VARIANTS + per_layer)
    readings = layer_readings(model, encoder, samples, device)
    variants = {v.name: metrics[v.name] for v in DEFAULT_VARIANTS}
    counts = np.bincount(readings.policy_layers, minlength=n_layers)
    return rounded({
        "model": settings.uground, "stills": settings.stills, "seeds": [s.seed for s in stills],
        "expressions": len(samples), "empty_targets": int(sum(not s.has_target for s in samples)),
        "layers": n_layers, "variants": variants, ALL_SHAPES: all_shapes_floor(stills),
        "giou_vs_mode1": {name: m["giou"] - variants[MODE1]["giou"] for name, m in variants.items() if name != MODE1},
        "similarity_map": {"threshold": ZERO_SHOT_THRESHOLD, "n": len(readings.inter),
                           **summarise_ious(readings.inter, readings.union)},
        "layer_masks": {key: [metrics[v.name][key] for v in per_layer] for key in ("giou", "ciou")},
        "policy": {"n": len(readings.policy_layers), "layers": {str(k): int(c) for k, c in enumerate(counts)},
                   "mean_probs": readings.policy_probs.mean(0).tolist()}})


def print_uground(report: dict[str, Any]) -> None:
    print(f"\nUGround — {report['model']}: {report['stills']} held-out stills, {report['expressions']} expressions "
          f"({report['empty_targets']} with an empty target)")
    print_variants({**report["variants"], f"{ALL_SHAPES} (floor)": report[ALL_SHAPES]})
    sim, masks, policy = report["similarity_map"], report["layer_masks"], report["policy"]
    print(f"\nper layer: similarity map ≥ {sim['threshold']} against the target ({sim['n']} expressions with a "
          f"target); SAM's mask with that layer's [SEG] (all {report['expressions']}); the policy's picks "
          f"(all {policy['n']})")
    print(f"{'layer':>5}{'map gIoU':>10}{'map cIoU':>10}{'SAM gIoU':>10}{'SAM cIoU':>10}{'picks':>7}{'mean P':>8}")
    for layer in range(report["layers"]):
        print(f"{layer:>5}{sim['giou'][layer]:>10.3f}{sim['ciou'][layer]:>10.3f}{masks['giou'][layer]:>10.3f}"
              f"{masks['ciou'][layer]:>10.3f}{policy['layers'][str(layer)]:>7}{policy['mean_probs'][layer]:>8.3f}")


def picking_stills(settings: Settings) -> str:
    """The held-out grounded-picking stills directory, generated (once) when it is not there; one that is
    there is used as it is (its first 3 · picking_seeds stills)."""
    from pathlib import Path

    from sim.grounded_stills import INDEX_NAME, write_grounded_stills
    from sim.shapes_world.dataset import HELDOUT

    directory = Path(settings.picking_stills)
    if (directory / INDEX_NAME).is_file():
        return str(directory)
    print(f"generating {settings.picking_seeds} held-out grounded-picking seeds into {directory} ...", file=sys.stderr)
    write_grounded_stills(directory, settings.picking_seeds, split=HELDOUT,
                          command=f"benchmarks/grounding.py (held-out, {settings.picking_seeds} seeds)")
    return str(directory)


def picking_part(settings: Settings) -> dict[str, Any]:
    """UGround's three readings and the colour baseline on every expression of the held-out picking stills."""
    from nodes.grounding import ColorGrounder
    from nodes.model_dir import resolve_device
    from nodes.uground.evaluate import DEFAULT_VARIANTS, Prediction, Tally, evaluate
    from nodes.uground.model import load_uground
    from nodes.uground.stills import GroundedStillsSource

    device = resolve_device(settings.device)
    model, encoder = load_uground(settings.uground, device)
    source = GroundedStillsSource(picking_stills(settings))
    n_stills = min(len(source), 3 * settings.picking_seeds)
    samples = [sample for index in range(n_stills) for sample in
               (source.sample_at(index, e) for e in source.expressions(index))]
    metrics = evaluate(model, encoder, samples, device, batch_size=UGROUND_BATCH, variants=DEFAULT_VARIANTS)
    colour, tally = ColorGrounder(min_pixels=1), Tally()
    for sample in samples:
        found = colour.ground_image(sample.image, sample.expression)
        tally.add(Prediction(found.mask, found.found, float(found.found)), sample.target, sample.kind)
    return rounded({"model": settings.uground, "stills": n_stills, "seeds": sorted({s.seed for s in samples}),
                    "expressions": len(samples), "empty_targets": int(sum(not s.has_target for s in samples)),
                    "variants": {**{v.name: metrics[v.name] for v in DEFAULT_VARIANTS}, COLOUR_BASELINE: tally.metrics()}})


def print_picking(report: dict[str, Any]) -> None:
    print(f"\nUGround on grounded-picking stills — {report['model']}: {report['stills']} held-out stills of "
          f"{len(report['seeds'])} seeds, {report['expressions']} expressions ({report['empty_targets']} empty)")
    print_variants(report["variants"])


def print_variants(rows: dict[str, dict[str, Any]]) -> None:
    """gIoU / cIoU / empty and target accuracy per variant, then gIoU by expression kind."""
    print(f"{'variant':<20}{'gIoU':>8}{'cIoU':>8}{'empty acc':>11}{'target acc':>12}")
    for name, m in rows.items():
        empty = "—" if m["empty_accuracy"] is None else f"{m['empty_accuracy']:.3f}"
        target = "—" if m["target_accuracy"] is None else f"{m['target_accuracy']:.3f}"
        print(f"{name:<20}{m['giou']:>8.3f}{m['ciou']:>8.3f}{empty:>11}{target:>12}")
    kinds = sorted({k for m in rows.values() for k in m["giou_by_kind"]})
    print(f"\ngIoU by expression kind\n{'variant':<20}" + "".join(f"{k:>11}" for k in kinds))
    for name, m in rows.items():
        print(f"{name:<20}" + "".join(f"{m['giou_by_kind'].get(k, float('nan')):>11.3f}" for k in kinds))


PARTS: dict[str, tuple[Callable[[Settings], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    KV_PROBE: (kv_probe_part, print_kv_probe),
    UGROUND: (uground_part, print_uground),
    PICKING: (picking_part, print_picking),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STILLS} held-out stills (about a minute)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--probe-only", action="store_true", help="run only the KV-probe part")
    only.add_argument("--uground-only", action="store_true", help="run only the UGround part")
    only.add_argument("--picking-only", action="store_true", help="run only UGround on the grounded-picking stills")
    parser.add_argument("--vlm", default=DEFAULT_VLM, help="VLM checkpoint directory (Hugging Face format)")
    parser.add_argument("--uground", default=DEFAULT_UGROUND, help="UGround directory (groundloop train uground)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stills", type=int, default=None, help=f"held-out stills (default {DEFAULT_STILLS})")
    parser.add_argument("--prefix", default=PREFIX_EXPRESSION,
                        help=f"text before the image in the prefix conditions: '{PREFIX_EXPRESSION}' (each expression "
                             "itself) or a fixed text")
    parser.add_argument("--picking-stills", default=DEFAULT_PICKING_STILLS,
                        help="held-out grounded-picking stills (generated here when missing)")
    args = parser.parse_args(argv)
    settings = Settings(vlm=args.vlm, uground=args.uground, device=args.device,
                        stills=args.stills or (QUICK_STILLS if args.quick else DEFAULT_STILLS),
                        train_stills=QUICK_TRAIN_STILLS if args.quick else DEFAULT_TRAIN_STILLS,
                        calibration=QUICK_CALIBRATION if args.quick else DEFAULT_CALIBRATION, prefix=args.prefix,
                        picking_stills=args.picking_stills,
                        picking_seeds=QUICK_PICKING_SEEDS if args.quick else DEFAULT_PICKING_SEEDS)
    only = [KV_PROBE] if args.probe_only else [UGROUND] if args.uground_only else [PICKING] if args.picking_only else []
    parts = only or list(PARTS)
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "grounding", "quick": args.quick, "parts": parts}
    for name in parts:
        measure, show = PARTS[name]
        part_started = time.monotonic()
        try:
            report[name] = measure(settings)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_MISSING_MODEL
        report[name]["elapsed_s"] = round(time.monotonic() - part_started, 1)
        show(report[name])
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
