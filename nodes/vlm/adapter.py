"""The one interface every VLM backend implements, and the config spec that picks a backend.

A node names its model in the graph YAML as a small mapping, and the same node runs on a laptop with a
local checkpoint or next to a GPU server:

    vlm: {hf: models/vlm}                                   # local Hugging Face checkpoint (never downloads)
    vlm: {hf: models/vlm, device: cuda, dtype: bfloat16}
    vlm: {openai: http://127.0.0.1:8000/v1, model: Qwen/Qwen2.5-VL-3B-Instruct}   # vLLM, llama.cpp server
    vlm: {openai: https://host/v1, model: NAME, api_key_env: MY_KEY, timeout_s: 30}
    vlm: {serve: vlm}                                       # a deployment `groundloop serve` runs (nodes/serving)

`parse_vlm_spec` checks a spec without loading anything (graph validation uses it); `load_vlm` builds
the adapter (slow: it may load weights).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nodes.serving.config import ServeRef

HF_KEY = "hf"
OPENAI_KEY = "openai"
SERVE_KEY = "serve"
SPEC_KEYS = (HF_KEY, OPENAI_KEY, SERVE_KEY)
DEFAULT_TIMEOUT_S = 60.0
HTTP_SCHEMES = ("http://", "https://")


class VlmError(RuntimeError):
    """A VLM call failed (server error, timeout, bad response): the caller decides what no answer means."""


class HfSpec(BaseModel):
    """A local Hugging Face checkpoint directory."""

    model_config = ConfigDict(extra="forbid")
    hf: str = Field(min_length=1, description="path of a local checkpoint directory (with config.json)")
    device: str = Field("auto", description="torch device; auto: cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bfloat16 on cuda, float32 on cpu")


class OpenAiSpec(BaseModel):
    """An OpenAI-compatible chat-completions server."""

    model_config = ConfigDict(extra="forbid")
    openai: str = Field(description="base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1, description="the model name the server knows")
    api_key_env: str | None = Field(None, description="environment variable holding the API key, if the server wants one")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0.0)

    @field_validator("openai")
    @classmethod
    def _is_http_url(cls, url: str) -> str:
        if not url.startswith(HTTP_SCHEMES):
            raise ValueError(f"expected an http:// or https:// base URL, got {url!r}")
        return url.rstrip("/")


VlmSpec = HfSpec | OpenAiSpec | ServeRef
SPEC_MODELS = {HF_KEY: HfSpec, OPENAI_KEY: OpenAiSpec, SERVE_KEY: ServeRef}


def parse_vlm_spec(spec: Any) -> VlmSpec:
    """The typed spec of a config mapping; ValueError naming the bad field otherwise. Loads nothing."""
    if isinstance(spec, (HfSpec, OpenAiSpec, ServeRef)):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"vlm: expected a mapping like {{{HF_KEY}: PATH}} or {{{OPENAI_KEY}: URL, model: NAME}}, got {spec!r}")
    kinds = [key for key in SPEC_KEYS if key in spec]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else f"none (keys: {sorted(spec)})"
        raise ValueError(f"vlm: needs exactly one of '{HF_KEY}' (local checkpoint path), '{OPENAI_KEY}' (server URL) "
                         f"or '{SERVE_KEY}' (deployment name); found {found}")
    model = SPEC_MODELS[kinds[0]]
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(f"vlm.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ValueError(problems) from None


class VlmAdapter(ABC):
    """Images and a prompt in, generated texts out. Implementations hold the model or the connection."""

    @abstractmethod
    def generate(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int = 1,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        """`n_samples` answers to `prompt` about `images` (each H×W×3 uint8 RGB), in the prompt's order.

        temperature 0 is greedy decoding; above 0, sampling that `seed` makes repeatable where the
        backend allows. Raises VlmError when the backend fails.
        """

    def score_answers(self, images: list[np.ndarray], prompt: str, answers: Sequence[str]) -> np.ndarray:
        """(K,) float64: the log-likelihood of each of `answers` as the whole reply to `prompt` about `images`
        (its tokens, then the end of the reply). Choosing the likeliest option never gives an invalid answer,
        which a small model's free text often is; only a backend that sees the model's logits can score.
        Raises VlmError where the backend cannot.
        """
        raise VlmError(f"{type(self).__name__} cannot score answers by likelihood; answer by generation instead")

    def close(self) -> None:
        """Release the model or connection."""


def check_generate_args(images: list[np.ndarray], max_new_tokens: int, n_samples: int, temperature: float) -> None:
    """Shared argument checks, so every backend refuses the same mistakes with the same words."""
    for i, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
            shape = getattr(image, "shape", None)
            raise ValueError(f"images[{i}]: expected an H×W×3 uint8 RGB array, got {type(image).__name__} {shape}")
    if max_new_tokens < 1 or n_samples < 1:
        raise ValueError(f"max_new_tokens and n_samples must be >= 1 (got {max_new_tokens}, {n_samples})")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def load_vlm(spec: Mapping[str, Any] | VlmSpec) -> VlmAdapter:
    """The adapter a spec names; ValueError for a bad spec, FileNotFoundError for a missing checkpoint."""
    parsed = parse_vlm_spec(spec)
    if isinstance(parsed, HfSpec):
        from nodes.vlm.hf import HfVlmAdapter

        return HfVlmAdapter(parsed.hf, device=parsed.device, dtype=parsed.dtype)
    if isinstance(parsed, ServeRef):
        from nodes.serving.client import ServedVlm

        return ServedVlm(parsed)
    from nodes.vlm.openai_http import OpenAiVlmAdapter

    return OpenAiVlmAdapter(parsed.openai, parsed.model, api_key_env=parsed.api_key_env, timeout_s=parsed.timeout_s)


class SharedVlm(VlmAdapter):
    """A node's handle on a model loaded once per process: the nodes of one graph that name the same
    local checkpoint (A.I.R.'s analysis and the answering node) share one copy in memory. Closing the
    last handle closes the model."""

    _loaded: ClassVar[dict[str, tuple[VlmAdapter, int]]] = {}  # spec key -> (adapter, handles open)
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, spec: Mapping[str, Any] | VlmSpec):
        parsed = parse_vlm_spec(spec)
        self._key = f"{type(parsed).__name__}:{parsed.model_dump_json()}"
        with self._lock:
            adapter, handles = self._loaded.get(self._key) or (None, 0)
            if adapter is None:
                adapter = load_vlm(parsed)
            self._loaded[self._key] = (adapter, handles + 1)
        self.adapter: VlmAdapter | None = adapter

    def generate(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int = 1,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        if self.adapter is None:
            raise VlmError("this VLM handle is closed")
        return self.adapter.generate(images, prompt, max_new_tokens=max_new_tokens, n_samples=n_samples,
                                     temperature=temperature, seed=seed)

    def score_answers(self, images: list[np.ndarray], prompt: str, answers: Sequence[str]) -> np.ndarray:
        if self.adapter is None:
            raise VlmError("this VLM handle is closed")
        return self.adapter.score_answers(images, prompt, answers)

    def close(self) -> None:
        if self.adapter is None:
            return
        with self._lock:
            adapter, handles = self._loaded[self._key]
            if handles > 1:
                self._loaded[self._key] = (adapter, handles - 1)
            else:
                del self._loaded[self._key]
                adapter.close()
        self.adapter = None
