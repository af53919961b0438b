"""The word-level tokenizer and the numpy/PIL image preprocessing: saved beside a model, loaded by
transformers' own classes, and equal to what CLIPImageProcessor computes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes.clip.config import ClipShapesConfig
from nodes.clip.data import FILLER_WORDS, all_labels, caption, describes
from nodes.clip.processing import BOS, EOS, PAD, UNK, ImagePreprocessor, build_tokenizer, tokenize, vocabulary


def test_tokenizer_words_and_specials_round_trip_through_auto_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    build_tokenizer(16).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    vocab = vocabulary()
    assert [vocab.index(t) for t in (PAD, UNK, BOS, EOS)] == [0, 1, 2, 3]  # EOS is not 2 (CLIP's legacy pooling)
    ids = tokenizer("A Red circle and the blue STAR")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == [BOS, "a", "red", "circle", "and", "the", "blue", "star", EOS]


def test_unknown_words_become_unk_and_cut_texts_keep_eos() -> None:
    tokenizer = build_tokenizer(8)
    tokens = tokenize(tokenizer, ["which shape met the red circle at about 0:12?", "a red circle"], max_len=8)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    words = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert words[0] == BOS and words[-1] == EOS and words[1:3] == [UNK, UNK]
    assert mask[1].tolist() == [1] * 5 + [0] * 3 and ids[1, 5:].tolist() == [0] * 3  # padded with PAD = 0


def test_caption_filler_words_are_all_unknown() -> None:
    tokenizer = build_tokenizer(64)
    ids = tokenize(tokenizer, [" ".join(FILLER_WORDS)], 64)["input_ids"][0]
    assert set(ids[1:-1].tolist()) == {vocabulary().index(UNK)}


def test_captions_name_visible_shapes_and_fit_by_subset() -> None:
    rng = np.random.default_rng(0)
    visible = ["red circle", "blue square", "orange star"]
    for _ in range(50):
        text, named = caption(visible, rng)
        assert named and named <= set(visible)
        assert all(label in text for label in named)
    assert caption([], rng)[1] == frozenset() and "empty" in caption([], rng)[0]
    assert describes(frozenset({"red circle"}), frozenset(visible))
    assert not describes(frozenset({"red square"}), frozenset(visible))
    assert describes(frozenset(), frozenset()) and not describes(frozenset(), frozenset(visible))
    assert len(all_labels()) == 42


def test_preprocessing_matches_transformers_clip_image_processor(hf_clip_dir: Path) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = np.random.default_rng(0).integers(0, 256, size=(3, 48, 64, 3), dtype=np.uint8)  # not square
    ours = ImagePreprocessor.from_dir(hf_clip_dir)(images)
    theirs = CLIPImageProcessorPil.from_pretrained(hf_clip_dir)(images=list(images), return_tensors="np")["pixel_values"]
    assert ours.shape == theirs.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preprocessor_of_our_config_round_trips_and_refuses_bad_input(tmp_path: Path) -> None:
    config = ClipShapesConfig(image_size=32, image_mean=(0.1, 0.2, 0.3), image_std=(0.5, 0.5, 0.5))
    pre = ImagePreprocessor.for_config(config)
    pre.save(tmp_path)
    again = ImagePreprocessor.from_dir(tmp_path)
    images = np.full((2, 64, 64, 3), 255, np.uint8)
    out = again(images)  # (2, 3, 32, 32)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :, 0, 0], [[1.8, 1.6, 1.4]] * 2, atol=1e-5)
    with pytest.raises(ValueError, match="RGB"):
        again(images[..., 0])
    with pytest.raises(ValueError, match="mean/std"):
        ImagePreprocessor.for_config(ClipShapesConfig())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImagePreprocessor.from_dir(tmp_path / "nowhere")
