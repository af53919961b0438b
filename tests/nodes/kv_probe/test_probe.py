"""The KV probe on tiny random-weight LLaVA and Qwen2.5-VL models: the value tokens it reads from the cache,
the prompt layout with and without a text prefix, and maps in the image's geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.kv_probe import probe_maps, probe_scores, threshold_maps
from nodes.kv_probe.layout import NO_SPAN, Box, token_span
from nodes.kv_probe.probe import paste
from tests.nodes.kv_probe.conftest import QWEN, load_probe, rgb

EXPRESSION = "the red cube"
PREFIX = "find the red cube"


def text_config(probe):
    return probe.model.config.text_config


def test_value_tokens_have_one_vector_per_layer_and_grid_cell_with_kv_heads_concatenated(probe):
    result = probe.run(rgb(48, 64), EXPRESSION)
    config = text_config(probe)
    h, w = result.inputs.grid_hw
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_key_value_heads * head_dim  # GQA: the cached KV heads, not the query heads
    assert result.image_values.shape == result.image_keys.shape == (config.num_hidden_layers, h * w, width)
    assert result.expression_values.shape == (config.num_hidden_layers, width)
    assert len(result.inputs.image_positions) == h * w


def test_values_are_the_cache_entries_at_the_image_positions(probe):
    inputs = probe.layout.build(rgb(40, 40), EXPRESSION)
    _, output = probe.forward_cache(inputs)
    layer = output.cache.layers[-1]
    result = probe.run(rgb(40, 40), EXPRESSION)
    cached = layer.values[0][:, inputs.image_positions]  # (H_kv, T, d)
    assert torch.allclose(result.image_values[-1], cached.permute(1, 0, 2).flatten(1))
    last = inputs.expression_span[1] - 1
    assert torch.allclose(result.expression_values[-1], layer.values[0][:, last].flatten())


def test_image_values_are_blind_to_the_expression_after_them(probe):
    image = rgb(48, 48, seed=3)
    one, other = probe.run(image, EXPRESSION), probe.run(image, "a blue ball")
    assert torch.allclose(one.image_values, other.image_values, atol=1e-5)
    assert not torch.allclose(one.expression_values, other.expression_values)


def test_the_prefix_comes_before_the_image_and_the_expression_after_it(probe):
    image = rgb(48, 48, seed=4)
    plain, prefixed = probe.layout.build(image, EXPRESSION), probe.layout.build(image, EXPRESSION, prefix=PREFIX)
    tokenizer = probe.layout.tokenizer
    ids = prefixed.batch["input_ids"][0]
    assert plain.prefix_span == NO_SPAN
    start, end = prefixed.prefix_span
    assert end <= int(prefixed.image_positions[0]) and int(prefixed.image_positions[-1]) < prefixed.expression_span[0]
    assert tokenizer.decode(ids[start:end]).strip() == PREFIX
    assert tokenizer.decode(ids[slice(*prefixed.expression_span)]).strip() == EXPRESSION
    shift = prefixed.length - plain.length  # the prefix's tokens and its separator, all before the image
    assert torch.equal(prefixed.image_positions, plain.image_positions + shift)
    assert prefixed.expression_span == (plain.expression_span[0] + shift, plain.expression_span[1] + shift)


def test_a_prefix_reaches_the_image_values(probe):
    image = rgb(48, 48, seed=5)
    plain, prefixed = probe.run(image, EXPRESSION), probe.run(image, EXPRESSION, prefix=PREFIX)
    assert not torch.allclose(plain.image_values[-1], prefixed.image_values[-1], atol=1e-5)


@pytest.mark.parametrize("height, width", [(48, 64), (60, 40), (40, 40)])
def test_maps_come_out_in_the_image_geometry(probe, height, width):
    result = probe.run(rgb(height, width, seed=6), EXPRESSION)
    maps = probe_maps(result)  # (L, H, W)
    assert maps.shape == (text_config(probe).num_hidden_layers, height, width)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    box = result.inputs.box
    inside = maps[:, box.top: box.top + box.height, box.left: box.left + box.width]
    assert maps.sum() == pytest.approx(float(inside.sum()))  # nothing outside what the grid covers
    masks = threshold_maps(maps)
    assert masks.dtype == torch.bool and masks.flatten(1).any(1).all()  # each map's maximum is ≥ 0.5


def test_the_highest_scoring_token_lands_in_its_grid_cell(probe):
    """The map's brightest region is where the best token's cell is, once resized to the image."""
    result = probe.run(rgb(64, 64, seed=7), EXPRESSION)
    scores = probe_scores(result)[-1]  # (T,)
    h, w = result.inputs.grid_hw
    row, col = divmod(int(scores.argmax()), w)
    box = result.inputs.box
    peak = probe_maps(result)[-1]  # (H, W)
    cell_h, cell_w = box.height / h, box.width / w
    y, x = int(box.top + (row + 0.5) * cell_h), int(box.left + (col + 0.5) * cell_w)
    assert float(peak[y, x]) == pytest.approx(float(peak.max()), abs=0.15)


def test_llava_grid_covers_the_centre_square_and_qwen_the_whole_image(probe):
    result = probe.run(rgb(48, 64), EXPRESSION)
    if probe.layout.qwen:
        assert result.inputs.box == Box(0, 0, 48, 64)
    else:
        assert result.inputs.box == Box(0, 8, 48, 48)


def test_paste_puts_the_grid_map_inside_its_box():
    maps = torch.ones(2, 3, 4)
    out = paste(maps, Box(1, 2, 3, 4), (6, 8))
    assert out.shape == (2, 6, 8) and out.sum() == 24 and out[:, 1:4, 2:6].all()


def test_token_span_takes_the_tokens_overlapping_the_characters():
    offsets = [(0, 0), (0, 3), (4, 7), (8, 12), (12, 13)]  # [BOS] "the" "red" "cube" "."
    assert token_span(offsets, 4, 12) == (2, 4)
    assert token_span(offsets, 20, 25) == NO_SPAN


def test_keys_of_differently_sized_images_are_refused_for_calibration(tiny_dirs):
    qwen = load_probe(tiny_dirs[QWEN])  # LLaVA resizes every image to one grid; Qwen keeps the aspect
    with pytest.raises(ValueError, match="different image-token grids"):
        qwen.image_keys([rgb(56, 56), rgb(112, 56)])


def test_a_probe_without_an_expression_has_no_map(probe):
    result = probe.run(rgb(32, 32), "")
    assert result.expression_values is None and result.inputs.expression_span == NO_SPAN
    with pytest.raises(ValueError, match="no expression"):
        probe_maps(result)


def test_image_keys_stack_per_image(probe):
    keys = probe.image_keys([rgb(40, 40, seed=s) for s in range(3)])
    assert keys.shape[0] == 3 and keys.shape[1] == text_config(probe).num_hidden_layers
    assert np.isfinite(keys.numpy()).all()
