"""`groundloop export clip --model DIR --out DIR`: a CLIP's image and text encoders as ONNX graphs.

Each tower is traced with its projection (the joint-space features, before normalisation) by
torch.onnx.export's TorchScript exporter (the dynamo exporter needs onnxscript, which is not
installed), with a dynamic batch and, for text, a dynamic length. The output directory also gets the
tokenizer, `preprocessor_config.json` and `config.json`, so `OnnxClipEmbedder` needs nothing else.
Before the directory is moved into place, the ONNX Runtime embedder is checked against the torch one
on the same images and texts: the max abs difference of the embeddings is printed and recorded, and
an export over the tolerance is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nodes.clip.cache import model_identity
from nodes.clip.embedder import (ATTENTION_MASK, DEVICE_CPU, IMAGE_EMBEDS, INPUT_IDS, ONNX_IMAGE_FILE, ONNX_META_FILE,
                                 ONNX_TEXT_FILE, PIXELS, TEXT_EMBEDS, OnnxClipEmbedder, TorchClipEmbedder)
from nodes.clip.model import DEFAULT_MODEL_DIR, HF_CONFIG_FILE, MissingModelError
from nodes.model_dir import OLD_PREFIX, PARTIAL_PREFIX
from nodes.clip.processing import PREPROCESSOR_FILE, tokenize

EXPORT_FORMAT = "groundloop.clip_onnx/1"
OPSET = 17
TOLERANCE = 1e-4  # max abs difference of unit-length embeddings, torch vs ONNX Runtime
CHECK_IMAGES = 8
CHECK_SIDE = 224  # check frames are this size; each model's preprocessing resizes them
CHECK_TEXTS = ("a red circle", "a blue square and a green star", "an empty frame",
               "Which shape met the yellow triangle at about 0:12?")
TRACE_TEXTS = CHECK_TEXTS[:2]
CHECK_SEED = 0


class ExportCheckError(RuntimeError):
    """ONNX Runtime and torch disagree by more than the tolerance."""


def _towers(model: Any) -> tuple[Any, Any]:
    """The image and text towers as modules returning projected features."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.clip.get_image_features(pixel_values=pixel_values).pooler_output  # (B, D)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output  # (N, D)

    return ImageTower().eval(), TextTower().eval()


def _trace(source: TorchClipEmbedder, out: Path, opset: int) -> None:
    import torch

    image_tower, text_tower = _towers(source.model)
    size = source.model.config.vision_config.image_size
    pixels = torch.zeros(2, 3, size, size)  # (2, 3, S, S): a batch of two, so batch stays a variable
    tokens = {k: torch.from_numpy(v) for k, v in tokenize(source.tokenizer, list(TRACE_TEXTS), source.max_text_len).items()}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        torch.onnx.export(image_tower, (pixels,), str(out / ONNX_IMAGE_FILE), input_names=[PIXELS],
                          output_names=[IMAGE_EMBEDS], dynamic_axes={PIXELS: {0: "batch"}, IMAGE_EMBEDS: {0: "batch"}},
                          opset_version=opset, dynamo=False)
        torch.onnx.export(text_tower, (tokens[INPUT_IDS], tokens[ATTENTION_MASK]), str(out / ONNX_TEXT_FILE),
                          input_names=[INPUT_IDS, ATTENTION_MASK], output_names=[TEXT_EMBEDS],
                          dynamic_axes={INPUT_IDS: {0: "batch", 1: "length"}, ATTENTION_MASK: {0: "batch", 1: "length"},
                                        TEXT_EMBEDS: {0: "batch"}},
                          opset_version=opset, dynamo=False)


def compare(torch_embedder: Any, onnx_embedder: Any, n_images: int = CHECK_IMAGES,
            texts: tuple[str, ...] = CHECK_TEXTS) -> dict[str, float]:
    """Max abs difference of both embedders' unit-length outputs on random frames and sample texts."""
    rng = np.random.default_rng(CHECK_SEED)
    images = rng.integers(0, 256, size=(n_images, CHECK_SIDE, CHECK_SIDE, 3), dtype=np.uint8)  # (B, H, W, 3)
    image_diff = np.abs(torch_embedder.embed_images(images) - onnx_embedder.embed_images(images)).max()
    text_diff = np.abs(torch_embedder.embed_texts(list(texts)) - onnx_embedder.embed_texts(list(texts))).max()
    return {"image_max_abs_diff": float(image_diff), "text_max_abs_diff": float(text_diff)}


def export_clip(model_dir: str | Path, out: str | Path, *, opset: int = OPSET, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export, check against torch, and move the directory into place; the export record."""
    source = TorchClipEmbedder(model_dir, device=DEVICE_CPU)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial, old = out.with_name(PARTIAL_PREFIX + out.name), out.with_name(OLD_PREFIX + out.name)
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    _trace(source, partial, opset)
    source.tokenizer.save_pretrained(partial)
    for name in (PREPROCESSOR_FILE, HF_CONFIG_FILE):
        shutil.copy2(source.model_dir / name, partial / name)
    record: dict[str, Any] = {"format": EXPORT_FORMAT, "source": str(source.model_dir.resolve()),
                              "source_identity": model_identity(source.model_dir), "dim": source.dim,
                              "max_text_len": source.max_text_len, "opset": opset}
    (partial / ONNX_META_FILE).write_text(json.dumps(record, indent=1))
    check = compare(source, OnnxClipEmbedder(partial, device=DEVICE_CPU))
    record["check"] = {**check, "tolerance": tolerance}
    if max(check.values()) > tolerance:
        shutil.rmtree(partial, ignore_errors=True)
        raise ExportCheckError(f"ONNX Runtime disagrees with torch for {model_dir}: {check} (tolerance {tolerance})")
    (partial / ONNX_META_FILE).write_text(json.dumps(record, indent=1))
    if out.exists():
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)
    return record


def _export_from_args(args: argparse.Namespace) -> int:
    try:
        record = export_clip(args.model, args.out, opset=args.opset, tolerance=args.tolerance)
    except (MissingModelError, ExportCheckError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check = record["check"]
    print(f"image encoder: max abs diff vs torch {check['image_max_abs_diff']:.2e}")
    print(f"text encoder:  max abs diff vs torch {check['text_max_abs_diff']:.2e}")
    print(json.dumps({"out": args.out, **record}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `export` command group (`groundloop export clip ...`) to the groundloop CLI."""
    export = commands.add_parser("export", help="export a model to another runtime (ONNX)")
    models = export.add_subparsers(dest="export_model", required=True)
    clip = models.add_parser("clip", help="CLIP image and text encoders to ONNX, checked against torch")
    clip.add_argument("--model", default=DEFAULT_MODEL_DIR, help="a local CLIP directory (ours or Hugging Face)")
    clip.add_argument("--out", required=True, help="directory to write, e.g. models/clip_shapes_onnx")
    clip.add_argument("--opset", type=int, default=OPSET)
    clip.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs embedding difference accepted")
    clip.set_defaults(func=_export_from_args)
