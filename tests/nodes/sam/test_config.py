"""The small SAM's config: the grid E it implies, the smallest SamModel that runs, layouts rejected early."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.clip.model import MissingModelError
from nodes.sam.config import (
    DEFAULT_MODEL_DIR, SamShapesConfig, build_model, read_meta, require_model_dir, save_model_dir)
from nodes.sam.processing import PREPROCESSOR_FILE, SamPreprocessor
from tests.nodes.sam.conftest import TINY


def test_default_config_gives_a_16_grid_and_64_px_mask_prompts() -> None:
    config = SamShapesConfig()
    hf = config.to_hf()
    assert (config.embedding_grid, config.mask_prompt_size) == (16, 64)
    assert hf.prompt_encoder_config.image_embedding_size == config.embedding_grid
    assert hf.vision_config.output_channels == hf.mask_decoder_config.hidden_size == 2 * hf.vision_config.num_pos_feats
    assert SamShapesConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown SamShapesConfig fields"):
        SamShapesConfig.from_dict({**config.to_dict(), "stale": 1})


def test_the_smallest_valid_sam_runs_on_a_one_cell_grid() -> None:
    """16 px in one 16 px patch: E = 1, so mask prompts and low-res masks are 4×4."""
    config = SamShapesConfig(image_size=16, patch_size=16, vision_width=4, vision_layers=1, vision_heads=1, embed_dim=8,
                             decoder_layers=1, decoder_heads=1, decoder_mlp=8, mask_input_channels=4, iou_head_hidden=8)
    model = build_model(config).eval()
    assert (config.embedding_grid, config.mask_prompt_size) == (1, 4)
    with torch.inference_mode():
        out = model(pixel_values=torch.zeros(2, 3, 16, 16), input_masks=torch.zeros(2, 1, 4, 4),
                    input_boxes=torch.tensor([[[1.0, 1.0, 9.0, 9.0]]] * 2), multimask_output=False)
    assert out.pred_masks.shape == (2, 1, 1, 4, 4)
    assert out.iou_scores.shape == (2, 1, 1)


@pytest.mark.parametrize("change, message", [
    ({"image_size": 100}, "not a multiple of patch_size"),
    ({"embed_dim": 4}, "at least 8"),
    ({"decoder_heads": 3}, "decoder_heads"),
    ({"mask_input_channels": 6}, "multiple of 4"),
    ({"vision_heads": 3}, "vision_heads"),
    ({"window_size": 4, "global_layers": (7,)}, "global_layers"),
])
def test_layouts_sam_would_reject_fail_early(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamShapesConfig(**change).validate()


def test_model_directory_holds_weights_preprocessing_and_our_record(tiny_sam_dir: Path) -> None:
    assert require_model_dir(tiny_sam_dir) == tiny_sam_dir
    assert SamPreprocessor.from_dir(tiny_sam_dir).longest_edge == TINY.image_size
    meta = read_meta(tiny_sam_dir)
    assert SamShapesConfig.from_dict(meta["config"]) == TINY and meta["trained"] is False


def test_a_missing_model_names_the_path_and_what_makes_one(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match=r"sam_shapes.*does not exist.*save_model_dir"):
        require_model_dir(tmp_path / Path(DEFAULT_MODEL_DIR).name)
    partial = tmp_path / "half"
    save_model_dir(build_model(TINY), TINY, partial, {})
    (partial / PREPROCESSOR_FILE).unlink()
    with pytest.raises(MissingModelError, match=rf"half.*has no {PREPROCESSOR_FILE}"):
        require_model_dir(partial)
