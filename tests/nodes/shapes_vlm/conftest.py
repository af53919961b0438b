"""Fixtures of the shapes-world VLM tests: a tiny random CLIP (our format) and a tiny VLM built on it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.shapes_vlm.config import VlmShapesConfig
from nodes.shapes_vlm.model import build_vlm, save_vlm_dir
from tests.nodes.clip.tiny import build_tiny_clip

#: one Llama layer of width 32 beside the tiny CLIP's 2 vision layers (32 px, patch 8: 16 image tokens)
TINY_VLM = VlmShapesConfig(hidden_size=32, layers=1, heads=2, kv_heads=1)
TINY_FRAME_PX = 64


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, processor = build_vlm(tiny_clip_dir, TINY_VLM)
    return save_vlm_dir(model, processor, TINY_VLM, tmp_path_factory.mktemp("vlm") / "tiny_vlm",
                        {"train": {"note": "random weights (tests)"}})
