"""Fixtures of the SAM tests: a tiny random-weight SamModel directory, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from nodes.sam.config import SamShapesConfig, build_model, save_model_dir

#: 32 px in 8 px patches: E = 4, 16×16 mask prompts and low-res masks; ~17k parameters
TINY = SamShapesConfig(image_size=32, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2, embed_dim=16,
                       decoder_layers=1, decoder_heads=2, decoder_mlp=32, mask_input_channels=4, iou_head_hidden=16)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    return save_model_dir(build_model(TINY), TINY, tmp_path_factory.mktemp("sam") / "tiny_sam", {"trained": False})
