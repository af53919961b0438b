"""Fixtures of the UGround tests: a tiny random CLIP, a tiny UGround on it (random weights) and its saved directory."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.sam.config import SamShapesConfig
from nodes.shapes_vlm.config import VlmShapesConfig
from nodes.uground.config import UGroundConfig
from nodes.uground.data import UGroundEncoder
from nodes.uground.model import UGroundModel, build_uground, save_uground_dir
from tests.nodes.clip.tiny import build_tiny_clip

#: two Llama layers of width 32 (L = 3 hidden states) on the tiny CLIP (32 px, patch 8: a 4×4 image grid);
#: a SAM on 32 px in 8 px patches (E = 4, 16×16 mask prompts)
TINY = UGroundConfig(
    vlm=VlmShapesConfig(hidden_size=32, layers=2, heads=2, kv_heads=1, max_positions=128),
    sam=SamShapesConfig(image_size=32, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2, embed_dim=16,
                        decoder_layers=1, decoder_heads=2, decoder_mlp=32, mask_input_channels=4, iou_head_hidden=16))
STILL_PX = 64  # referring-set stills in the tests


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture()
def tiny_uground(tiny_clip_dir: Path) -> tuple[UGroundModel, UGroundEncoder]:
    torch.manual_seed(0)
    return build_uground(tiny_clip_dir, TINY)


@pytest.fixture(scope="session")
def tiny_uground_dir(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, encoder = build_uground(tiny_clip_dir, TINY)
    return save_uground_dir(model, encoder, tmp_path_factory.mktemp("uground") / "tiny_uground",
                            {"train": {"note": "random weights (tests)"}})
