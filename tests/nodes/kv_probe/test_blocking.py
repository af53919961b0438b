"""Input-agnostic keys: found by their relative variance across images, and blocked by attention masking —
checked on the attention probabilities of eager attention, and sdpa blocking agreeing with eager."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nodes.kv_probe import BlockedKeys, agnostic_keys, key_blocking
from nodes.kv_probe.blocking import block_columns, relative_key_variance
from tests.nodes.kv_probe.conftest import ARCHITECTURES, load_probe, rgb

EXPRESSION = "the red cube"
IMAGE_HW = (40, 40)  # one size: every image gets the same grid


def calibration_images(n: int = 4) -> list:
    return [rgb(*IMAGE_HW, seed=100 + i) for i in range(n)]


def test_constant_keys_have_zero_relative_variance_whatever_their_norm():
    keys = torch.randn(5, 2, 4, 8)  # (N, L, T, D)
    keys[:, :, 1] = 50.0  # the same large vector for every image
    variance = relative_key_variance(keys)  # (L, T)
    assert variance.shape == (2, 4)
    assert torch.all(variance[:, 1] < 1e-6) and torch.all(variance[:, [0, 2, 3]] > 0.1)


def test_the_least_varying_positions_are_blocked_in_the_later_layers():
    keys = torch.randn(6, 4, 10, 8)
    keys[:, 2, 7] = torch.randn(8)  # input-agnostic in layer 2 only
    keys[:, 3, 4] = torch.randn(8)
    blocked = agnostic_keys(keys, fraction=0.1)
    assert blocked.layers == {2: (7,), 3: (4,)} and blocked.n_images == 6
    assert set(agnostic_keys(keys, fraction=0.2, from_layer=1).layers) == {1, 2, 3}


@pytest.mark.parametrize("kwargs, match", [({"fraction": 0.0}, "fraction"), ({"fraction": 1.0}, "fraction"),
                                           ({"from_layer": 4}, "from_layer")])
def test_bad_blocking_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        agnostic_keys(torch.randn(3, 4, 10, 8), **kwargs)


def test_one_image_cannot_show_what_varies():
    with pytest.raises(ValueError, match="N ≥ 2"):
        relative_key_variance(torch.randn(1, 2, 4, 8))


def test_block_columns_spells_out_causal_attention_when_there_is_no_mask():
    mask = block_columns(None, q_len=4, past=0, blocked=torch.tensor([1]), dtype=torch.float32, device=torch.device("cpu"))
    closed = mask[0, 0] < 0  # (Q, K)
    expected = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
    expected[:, 1] = True
    assert mask.shape == (1, 1, 4, 4) and torch.equal(closed, expected)


def test_block_columns_closes_columns_of_boolean_and_additive_masks():
    allowed = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    assert not block_columns(allowed, q_len=3, past=2, blocked=torch.tensor([0, 3]), dtype=torch.float32,
                             device=torch.device("cpu"))[..., [0, 3]].any()
    additive = torch.zeros(1, 1, 3, 5)
    out = block_columns(additive, q_len=3, past=2, blocked=torch.tensor([2]), dtype=torch.float32,
                        device=torch.device("cpu"))
    assert torch.all(out[..., 2] == torch.finfo(torch.float32).min) and torch.all(out[..., [0, 1, 3, 4]] == 0)


def test_flash_attention_is_refused_by_name():
    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(ValueError, match="flash_attention_2"):
        with key_blocking(model, {}):
            pass


def blocking_everything_from(probe, layer: int) -> BlockedKeys:
    return probe.calibrate_blocking(calibration_images(), fraction=0.25, from_layer=layer)


def test_blocked_keys_get_zero_attention_weight_in_blocked_layers_only(eager_probe):
    blocked = blocking_everything_from(eager_probe, 1)
    inputs = eager_probe.layout.build(rgb(*IMAGE_HW, seed=9), EXPRESSION)
    positions = blocked.positions(inputs.image_positions)
    _, output = eager_probe.forward_cache(inputs, blocked, output_attentions=True)
    _, plain = eager_probe.forward_cache(inputs, None, output_attentions=True)
    blocked_cols = positions[1]
    assert len(blocked_cols) >= 1
    later = slice(int(blocked_cols.max()) + 1, None)  # queries after every blocked key (causality hides the rest)
    assert torch.all(output.attentions[1][0][..., blocked_cols] == 0.0)  # (H, S, K): every head, every query
    assert torch.all(plain.attentions[1][0][:, later][..., blocked_cols] > 0.0)
    assert torch.equal(output.attentions[0], plain.attentions[0])  # layer 0 is not blocked
    rows = output.attentions[1][0].sum(-1)  # each query's weights still sum to one
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_blocking_changes_what_later_layers_read_and_nothing_before(eager_probe):
    blocked = blocking_everything_from(eager_probe, 0)
    image = rgb(*IMAGE_HW, seed=10)
    plain, masked = eager_probe.run(image, EXPRESSION), eager_probe.run(image, EXPRESSION, blocked=blocked)
    assert torch.allclose(plain.image_values[0], masked.image_values[0])  # layer 0's values come before any block
    assert not torch.allclose(plain.image_values[1], masked.image_values[1], atol=1e-6)


def test_hooks_are_removed_after_a_blocked_run(probe):
    blocked = blocking_everything_from(probe, 0)
    image = rgb(*IMAGE_HW, seed=11)
    before = probe.run(image, EXPRESSION)
    probe.run(image, EXPRESSION, blocked=blocked)
    assert torch.allclose(probe.run(image, EXPRESSION).image_values, before.image_values)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sdpa_blocking_agrees_with_eager_blocking(tiny_dirs, architecture):
    """sdpa builds no mask for plain causal attention: the hook's own causal mask must match eager's."""
    eager, sdpa = load_probe(tiny_dirs[architecture], "eager"), load_probe(tiny_dirs[architecture], "sdpa")
    blocked = blocking_everything_from(eager, 0)
    image = rgb(*IMAGE_HW, seed=12)
    a, b = eager.run(image, EXPRESSION, blocked=blocked), sdpa.run(image, EXPRESSION, blocked=blocked)
    assert torch.allclose(a.image_values, b.image_values, atol=1e-5)
    assert torch.allclose(a.expression_values, b.expression_values, atol=1e-5)


def test_blocked_positions_follow_the_image_after_a_prefix(probe):
    blocked = blocking_everything_from(probe, 0)
    image = rgb(*IMAGE_HW, seed=13)
    plain, prefixed = probe.layout.build(image, EXPRESSION), probe.layout.build(image, EXPRESSION, prefix="look")
    shift = int(prefixed.image_positions[0] - plain.image_positions[0])
    for layer, where in blocked.positions(plain.image_positions).items():
        assert torch.equal(blocked.positions(prefixed.image_positions)[layer], where + shift)
