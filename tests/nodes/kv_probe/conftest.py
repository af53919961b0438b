"""Tiny random-weight LLaVA and Qwen2.5-VL checkpoints (the builders of tests/nodes/vlm), loaded as probes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.nodes.vlm.conftest import QWEN_CHAT_TEMPLATE, build_tiny_llava, build_tiny_qwen

LLAVA, QWEN = "llava", "qwen"
ARCHITECTURES = (LLAVA, QWEN)


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {LLAVA: build_tiny_llava(tmp_path_factory.mktemp("kv_llava")),
            QWEN: build_tiny_qwen(tmp_path_factory.mktemp("kv_qwen"), chat_template=QWEN_CHAT_TEMPLATE)}


def load_probe(directory: Path, attention: str | None = None):
    """A probe on a freshly loaded checkpoint (its own model, so switching attention touches no other test)."""
    from nodes.kv_probe import KvProbe
    from nodes.vlm.hf import HfVlmAdapter

    vlm = HfVlmAdapter(directory, device="cpu", dtype="float32")
    if attention is not None:
        vlm.model.set_attn_implementation(attention)
    return KvProbe(vlm)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def probe(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    return load_probe(tiny_dirs[request.param])


@pytest.fixture(scope="module", params=ARCHITECTURES)
def eager_probe(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    """Eager attention: the only implementation that returns attention probabilities."""
    return load_probe(tiny_dirs[request.param], attention="eager")
