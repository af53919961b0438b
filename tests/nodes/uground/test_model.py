"""UGroundModel on a tiny random VLM and SAM: the vocabulary grows the VLM's by the referring words and
[SEG]/[REJ]; modes 1/2/3 pick the layers the paper says; the similarity map and SAM's mask come out at the
image's size with gradients into the language model; a saved directory reloads to the same outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.clip.model import MissingModelError
from nodes.shapes_vlm.model import vocabulary as vlm_vocabulary
from nodes.uground.config import MODE_LAST, MODE_POLICY, MODE_POLICY_MAP, UGroundConfig
from nodes.uground.data import REJ_TOKEN, SEG_TOKEN, ReferringSource, UGroundEncoder
from nodes.uground.model import (UGroundModel, build_tokenizer, build_uground, load_init_uground, load_uground,
                                 read_meta, require_model_dir, save_uground_dir, to_inputs, vocabulary)
from nodes.uground.stills import STILLS_WORDS
from sim.shapes_world.dataset import TRAIN
from tests.nodes.uground.conftest import STILL_PX, TINY

B = 6
CPU = torch.device("cpu")


def batch_of(encoder: UGroundEncoder, n: int = B, seed: int = 0):
    rng = np.random.default_rng(seed)
    return encoder.batch([ReferringSource(TRAIN, 20, STILL_PX).sample(rng) for _ in range(n)])


def test_the_vocabulary_extends_the_vlms_and_keeps_seg_and_rej_whole() -> None:
    words, old = vocabulary(), vlm_vocabulary()
    tail = [SEG_TOKEN, REJ_TOKEN, *STILLS_WORDS]
    assert words[: len(old)] == old and words[-len(tail):] == tail  # words added later come after [SEG]/[REJ]
    tokenizer = build_tokenizer(64)
    ids = tokenizer("Please segment all crosses left of the red star. ASSISTANT: [SEG] [REJ]")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[-2:] == tokenizer.convert_tokens_to_ids([SEG_TOKEN, REJ_TOKEN])
    assert tokenizer.unk_token_id not in tokenizer("Please segment all cubes and the green cube.")["input_ids"]


def test_the_encoder_teacher_forces_seg_or_rej_after_the_prompt(
        tiny_uground: tuple[UGroundModel, UGroundEncoder]) -> None:
    model, encoder = tiny_uground
    batch = batch_of(encoder, 12)
    for row in range(len(batch.input_ids)):
        answer = batch.input_ids[row, batch.seg_positions[row] + 1]
        assert answer == (encoder.seg_id if batch.has_target[row] else encoder.rej_id)
        assert batch.labels[row, batch.seg_positions[row] + 1] == answer  # the answer is learnt
        assert (batch.labels[row, : batch.seg_positions[row] + 1] < 0).all()  # the prompt is not
    assert batch.has_target.any() and not batch.has_target.all()
    assert batch.targets[~batch.has_target].sum() == 0
    prompts = encoder.encode([np.zeros((STILL_PX, STILL_PX, 3), np.uint8)], ["the red circle"])
    assert (prompts.labels < 0).all() and prompts.input_ids.shape[1] == prompts.seg_positions[0] + 1


@pytest.mark.parametrize("mode", [MODE_LAST, MODE_POLICY_MAP, MODE_POLICY])
def test_each_mode_takes_its_layers_and_masks_come_out_at_the_image_size(
        tiny_uground: tuple[UGroundModel, UGroundEncoder], mode: int) -> None:
    model, encoder = tiny_uground
    batch = batch_of(encoder)
    out = model(to_inputs(batch, CPU), batch.image_hw, batch.sam_resized_hw, mode=mode, sample=True)
    n, last = int(batch.has_target.sum()), TINY.num_layers - 1
    assert out.reading.seg_states.shape == (B, TINY.num_layers, TINY.vlm.hidden_size)
    assert out.reading.image_states.shape == (B, TINY.num_layers, 16, TINY.vlm.hidden_size)  # the 4×4 tiny grid
    assert out.masks.mask_logits.shape == out.masks.similarity.shape == (n, STILL_PX, STILL_PX)
    assert out.masks.prompt.shape == (n, 1, TINY.sam.mask_prompt_size, TINY.sam.mask_prompt_size)
    similarity = out.masks.similarity.detach()
    assert 0.0 <= float(similarity.min()) and float(similarity.max()) <= 1.0 + 1e-6
    if mode == MODE_LAST:
        assert out.choice.log_probs is None and (out.choice.layers == last).all()
    else:
        assert out.choice.log_probs.shape == (n,)
    assert torch.equal(out.sam_layers, out.choice.layers if mode != MODE_POLICY_MAP else torch.full((n,), last))


def test_the_similarity_map_trains_the_language_model_and_the_clip_tower_stays(
        tiny_uground: tuple[UGroundModel, UGroundEncoder]) -> None:
    model, encoder = tiny_uground
    batch = batch_of(encoder)
    out = model(to_inputs(batch, CPU), batch.image_hw, batch.sam_resized_hw, mode=MODE_LAST, sample=False)
    out.masks.similarity.sum().backward()
    lm = model.vlm.model.language_model
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.layers[-1].parameters())
    assert all(p.grad is None for p in model.vlm.model.vision_tower.parameters())


def test_a_saved_model_reloads_to_the_same_outputs(tiny_uground_dir: Path) -> None:
    model, encoder = load_uground(tiny_uground_dir)
    again, _ = load_uground(tiny_uground_dir)
    assert UGroundConfig.from_dict(read_meta(tiny_uground_dir)["config"]) == TINY
    batch = batch_of(encoder)
    with torch.no_grad():
        a = model(to_inputs(batch, CPU), batch.image_hw, batch.sam_resized_hw, mode=MODE_LAST, sample=False)
        b = again(to_inputs(batch, CPU), batch.image_hw, batch.sam_resized_hw, mode=MODE_LAST, sample=False)
    assert torch.allclose(a.masks.mask_logits, b.masks.mask_logits)
    assert torch.allclose(a.reading.present, b.reading.present)
    assert torch.equal(model.policy.weight, again.policy.weight)


def test_a_missing_model_names_the_path_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match=r"nothing_here.*does not exist.*groundloop train uground"):
        require_model_dir(tmp_path / "nothing_here")


def test_a_model_trained_before_new_words_starts_a_grown_one(tiny_clip_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--init-uground: a directory saved without the stills' words loads into a model that has them, every old
    row and weight as trained; a vocabulary that renumbers words is refused."""
    import nodes.uground.model as model_module

    monkeypatch.setattr(model_module, "STILLS_WORDS", ())
    torch.manual_seed(3)
    old_model, old_encoder = build_uground(tiny_clip_dir, TINY)
    saved = save_uground_dir(old_model, old_encoder, tmp_path / "old", {"train": {"note": "random weights (tests)"}})
    monkeypatch.undo()
    torch.manual_seed(4)
    model, encoder = build_uground(tiny_clip_dir, TINY)
    load_init_uground(model, encoder, saved)
    old_rows = old_model.vlm.get_input_embeddings().weight
    grown = model.vlm.get_input_embeddings().weight
    assert grown.shape[0] == old_rows.shape[0] + len(STILLS_WORDS)
    assert torch.equal(grown[: old_rows.shape[0]], old_rows)
    assert torch.equal(model.sam.mask_decoder.iou_prediction_head.proj_out.weight,
                       old_model.sam.mask_decoder.iou_prediction_head.proj_out.weight)
    monkeypatch.setattr(model_module, "STILLS_WORDS", ("zebra", *STILLS_WORDS))
    renumbered, renumbered_encoder = build_uground(tiny_clip_dir, TINY)
    monkeypatch.undo()
    moved = save_uground_dir(renumbered, renumbered_encoder, tmp_path / "moved", {"train": {}})
    with pytest.raises(ValueError, match="not a prefix"):
        load_init_uground(model, encoder, moved)
