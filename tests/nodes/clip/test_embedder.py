"""The CLIP embedder: torch and ONNX Runtime agree, any local Hugging Face CLIP loads, rows are unit
length, and a missing model names the command that makes it. The ONNX tests skip only where
onnxruntime is not installed (it is a dependency in pyproject.toml)."""
from __future__ import annotations

import argparse
import importlib
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nodes.clip.embedder import ONNX_META_FILE, OnnxClipEmbedder, TorchClipEmbedder, load_embedder
from nodes.clip.model import MissingModelError
from nodes.clip.onnx_export import ExportCheckError, export_clip, register
from tests.nodes.clip.tiny import HF_IMAGE_PX, OPENAI_MEAN

TEXTS = ["a red circle", "the blue square and a green star", "Which shape met the yellow triangle at about 0:12?"]
AGREE = 1e-4


def frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def onnx_dir(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed in this environment")
    out = tmp_path_factory.mktemp("onnx") / "tiny_clip_onnx"
    export_clip(tiny_clip_dir, out)
    return out


def test_torch_embeddings_are_unit_rows_independent_of_the_batch(tiny_clip_dir: Path) -> None:
    embedder = TorchClipEmbedder(tiny_clip_dir, device="cpu")
    images = frames(5)
    batch = embedder.embed_images(images)  # (5, D)
    assert batch.shape == (5, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_images(images[2:3])[0], batch[2], atol=1e-5)
    texts = embedder.embed_texts(TEXTS)  # (3, D)
    assert texts.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed_texts(TEXTS[:1])[0], texts[0], atol=1e-5)  # padding does not leak
    assert embedder.embed_images(images[:0]).shape == (0, 32) and embedder.embed_texts([]).shape == (0, 32)
    with pytest.raises(TypeError, match="list"):
        embedder.embed_texts("a red circle")


def test_onnx_agrees_with_torch(tiny_clip_dir: Path, onnx_dir: Path) -> None:
    torch_embedder = load_embedder(tiny_clip_dir, "torch", device="cpu")
    onnx_embedder = load_embedder(onnx_dir, "onnx", device="auto")
    assert isinstance(onnx_embedder, OnnxClipEmbedder) and "CPUExecutionProvider" in onnx_embedder.providers
    images = frames(7, seed=1)  # another batch size than the traced one
    assert np.abs(torch_embedder.embed_images(images) - onnx_embedder.embed_images(images)).max() < AGREE
    assert np.abs(torch_embedder.embed_texts(TEXTS) - onnx_embedder.embed_texts(TEXTS)).max() < AGREE
    check = json.loads((onnx_dir / ONNX_META_FILE).read_text())["check"]
    assert check["image_max_abs_diff"] < AGREE and check["text_max_abs_diff"] < AGREE


def test_any_hugging_face_clip_loads_and_matches_the_transformers_pipeline(hf_clip_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    embedder = TorchClipEmbedder(hf_clip_dir, device="cpu")
    assert embedder.dim == 24 and embedder.preprocess.crop_size == (HF_IMAGE_PX, HF_IMAGE_PX)
    np.testing.assert_allclose(embedder.preprocess.mean, OPENAI_MEAN)
    images = frames(2)
    model = CLIPModel.from_pretrained(hf_clip_dir, local_files_only=True).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(hf_clip_dir)(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = AutoTokenizer.from_pretrained(hf_clip_dir, local_files_only=True)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    np.testing.assert_allclose(embedder.embed_images(images), image.numpy(), atol=1e-5)
    np.testing.assert_allclose(embedder.embed_texts(TEXTS), text.numpy(), atol=1e-5)
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed in this environment")
    record = export_clip(hf_clip_dir, tmp_path / "hf_onnx")
    assert max(record["check"]["image_max_abs_diff"], record["check"]["text_max_abs_diff"]) < AGREE


def test_missing_models_name_the_command_that_makes_them(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "clip_shapes"
    with pytest.raises(MissingModelError, match=r"clip_shapes.*groundloop train clip"):
        load_embedder(missing, "torch")
    with pytest.raises(MissingModelError, match=r"groundloop export clip .*groundloop train clip"):
        load_embedder(tmp_path / "clip_onnx", "onnx")
    missing.mkdir(parents=True)
    with pytest.raises(MissingModelError, match="has no config.json"):
        load_embedder(missing, "torch")
    with pytest.raises(ValueError, match="unknown CLIP backend"):
        load_embedder(missing, "tensorrt")


def test_export_command_prints_the_differences_and_a_failed_check_leaves_nothing(
        tiny_clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed in this environment")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "clip", "--model", str(tiny_clip_dir), "--out", str(tmp_path / "onnx")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "image encoder: max abs diff vs torch" in out and "text encoder:  max abs diff vs torch" in out
    with pytest.raises(ExportCheckError, match="disagrees"):
        export_clip(tiny_clip_dir, tmp_path / "strict", tolerance=-1.0)
    assert not any(p.name.endswith("strict") for p in tmp_path.iterdir())
    args = parser.parse_args(["export", "clip", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert args.func(args) == 2
    assert "groundloop train clip" in capsys.readouterr().err


def test_pyproject_registers_the_export_command_the_trainer_and_the_node() -> None:
    entries = tomllib.loads(Path("pyproject.toml").read_text())["project"]["entry-points"]
    targets = [entries["groundloop.commands"]["export"], entries["groundloop.train"]["clip"],
               entries["groundloop.nodes"]["ClipPrescan"]]
    for target in targets:
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), target
