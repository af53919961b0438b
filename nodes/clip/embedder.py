"""One interface to a CLIP's two towers, two ways to run them: torch (any local Hugging Face CLIP
checkpoint, ours included) and ONNX Runtime (a directory `groundloop export clip` wrote).

Both take RGB frames as a (B, H, W, 3) uint8 batch and text as strings, preprocess them the same way
(`nodes.clip.processing`: the checkpoint's own `preprocessor_config.json` and tokenizer) and return
L2-normalised float32 rows, so a cosine similarity is a dot product. Nothing downloads: a directory
that is not there is a `MissingModelError` naming it and the command that makes it.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from nodes.clip.cache import model_identity
from nodes.clip.model import DEFAULT_MODEL_DIR, TRAIN_COMMAND, require_model_dir
from nodes.clip.processing import ImagePreprocessor, tokenize
from nodes.model_dir import resolve_device

BACKEND_TORCH, BACKEND_ONNX = "torch", "onnx"
BACKENDS = (BACKEND_TORCH, BACKEND_ONNX)
DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA = "auto", "cpu", "cuda"
ONNX_IMAGE_FILE = "image_encoder.onnx"
ONNX_TEXT_FILE = "text_encoder.onnx"
ONNX_META_FILE = "onnx_export.json"
#: the encoders' input and output names, shared with the exporter
PIXELS, INPUT_IDS, ATTENTION_MASK = "pixel_values", "input_ids", "attention_mask"
IMAGE_EMBEDS, TEXT_EMBEDS = "image_embeds", "text_embeds"
ONNX_CUDA, ONNX_CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
EXPORT_COMMAND = "groundloop export clip --model {model} --out {path}"
NORM_EPS = 1e-12


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), NORM_EPS)


class ClipEmbedder(ABC):
    """Images and texts into one joint space; rows are L2-normalised."""

    backend: str

    def __init__(self, model_dir: Path, tokenizer: Any, preprocess: ImagePreprocessor, dim: int, max_text_len: int):
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.dim = dim
        self.max_text_len = max_text_len

    @cached_property
    def identity(self) -> str:
        """What decides an image embedding: the directory and the hash of its weights (cache keys)."""
        return model_identity(self.model_dir)

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 → (B, D) float32, unit rows."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        pixels = self.preprocess(np.asarray(images))  # (B, 3, S, S) float32
        return l2_normalise(self._image_features(pixels))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """N strings → (N, D) float32, unit rows."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of strings, got one string")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokens = tokenize(self.tokenizer, texts, self.max_text_len)  # (N, L) int64 each
        return l2_normalise(self._text_features(tokens["input_ids"], tokens["attention_mask"]))

    @abstractmethod
    def _image_features(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 → (B, D) projected, not normalised."""

    @abstractmethod
    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(N, L) int64 twice → (N, D) projected, not normalised."""


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


class TorchClipEmbedder(ClipEmbedder):
    """`CLIPModel.from_pretrained(dir, local_files_only=True)`, on CUDA when present (device auto)."""

    backend = BACKEND_TORCH

    def __init__(self, model_dir: str | Path, device: str = DEVICE_AUTO, num_threads: int | None = None):
        import torch
        from transformers import CLIPModel

        directory = require_model_dir(model_dir)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)
        self.model = CLIPModel.from_pretrained(directory, local_files_only=True).eval().to(self.device)
        config = self.model.config
        super().__init__(directory, _load_tokenizer(directory), ImagePreprocessor.from_dir(directory),
                         config.projection_dim, config.text_config.max_position_embeddings)

    def _image_features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=torch.from_numpy(pixels).to(self.device))
            return out.pooler_output.float().cpu().numpy()  # (B, D)

    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=torch.from_numpy(input_ids).to(self.device),
                                               attention_mask=torch.from_numpy(attention_mask).to(self.device))
            return out.pooler_output.float().cpu().numpy()  # (N, D)


def onnx_providers(device: str) -> list[str]:
    """CUDA first when asked for (auto: when this onnxruntime has it), CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == DEVICE_CUDA and ONNX_CUDA not in available:
        raise RuntimeError(f"device cuda asked for, but this onnxruntime has no {ONNX_CUDA} "
                           f"(available: {', '.join(available)}); install onnxruntime-gpu or use device auto/cpu")
    use_cuda = device == DEVICE_CUDA or (device == DEVICE_AUTO and ONNX_CUDA in available)
    return [ONNX_CUDA, ONNX_CPU] if use_cuda else [ONNX_CPU]


class OnnxClipEmbedder(ClipEmbedder):
    """The two exported encoders in ONNX Runtime sessions."""

    backend = BACKEND_ONNX

    def __init__(self, model_dir: str | Path, device: str = DEVICE_AUTO, num_threads: int | None = None):
        import onnxruntime as ort

        hint = (f"export one with `{EXPORT_COMMAND.format(model=DEFAULT_MODEL_DIR, path=model_dir)}` "
                f"(the model to export comes from `{TRAIN_COMMAND.format(path=DEFAULT_MODEL_DIR)}`)")
        directory = require_model_dir(model_dir, marker=ONNX_IMAGE_FILE, make_hint=hint)
        meta = json.loads((directory / ONNX_META_FILE).read_text())
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        providers = onnx_providers(device)
        self.image_session = ort.InferenceSession(str(directory / ONNX_IMAGE_FILE), options, providers=providers)
        self.text_session = ort.InferenceSession(str(directory / ONNX_TEXT_FILE), options, providers=providers)
        self.providers = self.image_session.get_providers()
        super().__init__(directory, _load_tokenizer(directory), ImagePreprocessor.from_dir(directory),
                         int(meta["dim"]), int(meta["max_text_len"]))

    def _image_features(self, pixels: np.ndarray) -> np.ndarray:
        return self.image_session.run([IMAGE_EMBEDS], {PIXELS: pixels})[0]  # (B, D)

    def _text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        wanted = {i.name for i in self.text_session.get_inputs()}  # a trace may drop an input it never read
        return self.text_session.run([TEXT_EMBEDS], {k: v for k, v in feeds.items() if k in wanted})[0]  # (N, D)


def load_embedder(model_dir: str | Path, backend: str = BACKEND_TORCH, device: str = DEVICE_AUTO,
                  num_threads: int | None = None) -> ClipEmbedder:
    """The embedder for `backend` (torch | onnx) over the model in `model_dir`."""
    if backend == BACKEND_TORCH:
        return TorchClipEmbedder(model_dir, device, num_threads)
    if backend == BACKEND_ONNX:
        return OnnxClipEmbedder(model_dir, device, num_threads)
    raise ValueError(f"unknown CLIP backend {backend!r}; choose one of {', '.join(BACKENDS)}")
