"""load_vlm: config specs checked by field, and the Hugging Face adapter on tiny random-weight checkpoints
of the real architectures, loaded offline from a directory like a downloaded one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes.vlm import SharedVlm, VlmAdapter, VlmError, load_vlm
from nodes.vlm.adapter import HfSpec, OpenAiSpec, parse_vlm_spec
from nodes.vlm.hf import QWEN_IMAGE_PAD

PROMPT = "Where is the red cube? Answer in JSON."


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("spec, field", [
    ({}, "exactly one of 'hf'"),
    ({"hf": "a", "openai": "http://x/v1", "model": "m"}, "found hf and openai"),
    ({"hf": ""}, "vlm.hf"),
    ({"hf": "models/vlm", "dtype": "float64"}, "vlm.dtype"),
    ({"hf": "models/vlm", "devise": "cpu"}, "vlm.devise"),
    ({"openai": "http://127.0.0.1:8000/v1"}, "vlm.model"),
    ({"openai": "ftp://host/v1", "model": "m"}, "vlm.openai"),
    ({"openai": "http://host/v1", "model": "m", "timeout_s": 0}, "vlm.timeout_s"),
    ("models/vlm", "expected a mapping"),
])
def test_a_wrong_spec_is_a_value_error_naming_the_field(spec, field):
    with pytest.raises(ValueError, match=field):
        load_vlm(spec)


def test_a_good_spec_parses_without_loading_anything(tmp_path):
    assert isinstance(parse_vlm_spec({"hf": str(tmp_path / "absent")}), HfSpec)  # a path is only checked at load
    spec = parse_vlm_spec({"openai": "http://127.0.0.1:8000/v1/", "model": "qwen"})
    assert isinstance(spec, OpenAiSpec) and spec.openai == "http://127.0.0.1:8000/v1"


def test_a_missing_checkpoint_names_the_path_and_how_to_fetch_one(tmp_path):
    missing = tmp_path / "models" / "vlm"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*groundloop train vlm.*hf download"):
        load_vlm({"hf": str(missing)})


@pytest.fixture(scope="module")
def qwen(tiny_qwen_dir: Path) -> VlmAdapter:
    return load_vlm({"hf": str(tiny_qwen_dir), "device": "cpu"})


def test_qwen_samples_n_answers_repeatably_with_a_seed(qwen):
    images = [rgb(48, 64)]
    first = qwen.generate(images, PROMPT, max_new_tokens=4, n_samples=2, temperature=1.0, seed=7)
    again = qwen.generate(images, PROMPT, max_new_tokens=4, n_samples=2, temperature=1.0, seed=7)
    assert len(first) == 2 and all(isinstance(text, str) for text in first)
    assert first == again


def test_qwen_greedy_answers_are_identical(qwen):
    answers = qwen.generate([rgb(48, 64)], PROMPT, max_new_tokens=4, n_samples=2)
    assert len(answers) == 2 and answers[0] == answers[1]


def test_qwen_image_pads_match_the_merged_patches(qwen):
    batch = qwen.inputs.encode([rgb(48, 64), rgb(60, 40, seed=1)], PROMPT)
    pad_id = qwen.inputs.tokenizer.convert_tokens_to_ids(QWEN_IMAGE_PAD)
    merged = int((batch["image_grid_thw"].prod(-1) // qwen.inputs.image_processor.merge_size ** 2).sum())
    assert int((batch["input_ids"] == pad_id).sum()) == merged > 0


def test_qwen_without_a_chat_template_uses_the_qwen_chat_format(tiny_qwen_without_template_dir):
    vlm = load_vlm({"hf": str(tiny_qwen_without_template_dir), "device": "cpu"})
    text = vlm.inputs.chat_text(2, PROMPT)
    assert text.startswith("<|im_start|>system") and text.count("<|vision_start|>") == 2
    assert len(vlm.generate([rgb(48, 64), rgb(32, 32)], PROMPT, max_new_tokens=3, n_samples=2, temperature=0.7)) == 2


def test_llava_samples_n_answers(tiny_llava_dir):
    vlm = load_vlm({"hf": str(tiny_llava_dir), "device": "cpu", "dtype": "float32"})
    answers = vlm.generate([rgb(48, 64)], PROMPT, max_new_tokens=4, n_samples=2, temperature=1.0, seed=3)
    assert len(answers) == 2 and all(isinstance(text, str) for text in answers)
    assert answers == vlm.generate([rgb(48, 64)], PROMPT, max_new_tokens=4, n_samples=2, temperature=1.0, seed=3)


def test_bad_images_are_refused_by_name(qwen):
    with pytest.raises(ValueError, match=r"images\[0\]"):
        qwen.generate([np.zeros((8, 8), np.uint8)], PROMPT, max_new_tokens=2)


def reference_log_likelihood(vlm: VlmAdapter, images: list[np.ndarray], prompt: str, answer: str) -> float:
    """The answer's summed log-probability from its own unpadded forward pass: prompt, answer, [EOS]."""
    import torch

    encoded = vlm.inputs.encode(images, prompt)
    tokenizer = vlm.inputs.tokenizer
    reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.cat([encoded["input_ids"], torch.tensor([reply])], 1)  # (1, T + A)
    inputs = {**encoded, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logits = vlm.model(**inputs).logits[0].float()  # (T + A, V)
    n_prompt = encoded["input_ids"].shape[1]
    log_probs = torch.log_softmax(logits[n_prompt - 1:-1], -1)  # (A, V)
    return float(log_probs[torch.arange(len(reply)), torch.tensor(reply)].sum())


@pytest.mark.parametrize("architecture", ["qwen", "llava"])
def test_answers_are_scored_by_their_log_likelihood(architecture, tiny_qwen_dir, tiny_llava_dir):
    directory = tiny_qwen_dir if architecture == "qwen" else tiny_llava_dir
    vlm = load_vlm({"hf": str(directory), "device": "cpu", "dtype": "float32"})
    images, answers = [rgb(48, 64), rgb(40, 40, seed=2)], ["red", "the blue square", "B"]  # answers of unequal length
    scores = vlm.score_answers(images, PROMPT, answers)
    assert scores.shape == (3,) and (scores < 0).all()
    expected = [reference_log_likelihood(vlm, images, PROMPT, answer) for answer in answers]
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)  # right padding changes nothing
    assert vlm.score_answers(images, PROMPT, answers[1:2])[0] == pytest.approx(scores[1], abs=1e-4)
    with pytest.raises(ValueError, match="at least one answer"):
        vlm.score_answers(images, PROMPT, [])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        vlm.score_answers([np.zeros((8, 8), np.uint8)], PROMPT, answers)


def test_a_backend_without_logits_refuses_to_score_by_name():
    from nodes.vlm.openai_http import OpenAiVlmAdapter

    vlm = OpenAiVlmAdapter("http://127.0.0.1:9/v1", "m")
    with pytest.raises(VlmError, match="OpenAiVlmAdapter cannot score answers by likelihood"):
        vlm.score_answers([rgb(8, 8)], PROMPT, ["A", "B"])


class CountingVlm(VlmAdapter):
    """A stand-in model that records being loaded and closed."""

    loads = 0

    def __init__(self) -> None:
        CountingVlm.loads += 1
        self.closed = False

    def generate(self, images, prompt, *, max_new_tokens, n_samples=1, temperature=0.0, seed=0):
        return [f"{prompt}:{len(images)}"] * n_samples

    def close(self) -> None:
        self.closed = True


def test_nodes_naming_one_checkpoint_share_one_model_until_the_last_closes(monkeypatch, tmp_path: Path) -> None:
    import nodes.vlm.adapter as adapter_module

    CountingVlm.loads = 0
    monkeypatch.setattr(adapter_module, "load_vlm", lambda spec: CountingVlm())
    spec, other = {"hf": str(tmp_path / "a")}, {"hf": str(tmp_path / "b")}
    first, second, third = SharedVlm(spec), SharedVlm(dict(spec)), SharedVlm(other)
    assert CountingVlm.loads == 2 and first.adapter is second.adapter is not third.adapter
    assert second.generate([rgb(4, 4)], "q", max_new_tokens=2) == ["q:1"]
    model = first.adapter
    first.close()
    first.close()  # twice is harmless
    assert not model.closed and second.generate([], "p", max_new_tokens=1) == ["p:0"]
    second.close()
    assert model.closed
    with pytest.raises(VlmError, match="closed"):
        second.generate([], "p", max_new_tokens=1)
    SharedVlm(spec).close()
    assert CountingVlm.loads == 3  # a fresh load once every handle had closed
    third.close()
