"""The VLM checkpoint: built from a CLIP's vision tower, saved, loaded through `load_vlm` (the LLaVA path
of nodes/vlm/hf.py) and generating; the tokenizer knows every word the nodes send; training inputs are
exactly what the processor builds at inference; a missing CLIP names the command that makes one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.air.analysis import analysis_prompt
from nodes.clip.model import MissingModelError
from nodes.clip.processing import ImagePreprocessor
from nodes.shapes_vlm.config import image_tokens
from nodes.shapes_vlm.data import CAPTION_PROMPT, Encoder, ShapesTasks, describe
from nodes.shapes_vlm.model import IMAGE_TOKEN, build_tokenizer, build_vlm, read_meta, vocabulary
from nodes.video_qa import answer_prompt
from nodes.vlm import load_vlm
from nodes.vlm.hf import chat_messages
from sim.shapes_world.dataset import TRAIN
from tests.nodes.shapes_vlm.conftest import TINY_FRAME_PX, TINY_VLM

COVERAGE_SCENES = 30


def test_the_checkpoint_loads_through_load_vlm_and_generates(tiny_vlm_dir: Path) -> None:
    vlm = load_vlm({"hf": str(tiny_vlm_dir), "device": "cpu", "dtype": "float32"})
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    answers = vlm.generate([frame, frame], CAPTION_PROMPT, max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)
    sampled = vlm.generate([frame], CAPTION_PROMPT, max_new_tokens=3, n_samples=2, temperature=1.0, seed=1)
    assert len(sampled) == 2 and all(isinstance(text, str) for text in sampled)
    assert read_meta(tiny_vlm_dir)["config"] == TINY_VLM.to_dict()


def test_the_vision_tower_is_the_clips(tiny_clip_dir: Path) -> None:
    from transformers import CLIPModel

    model, _ = build_vlm(tiny_clip_dir, TINY_VLM)
    clip = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True)
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[name], weight) for name, weight in clip.vision_model.state_dict().items())
    assert model.config.vision_feature_layer == TINY_VLM.vision_feature_layer


def test_the_tokenizer_knows_every_word_of_the_prompts_and_answers() -> None:
    tokenizer = build_tokenizer(TINY_VLM.max_positions)
    unk = tokenizer.unk_token_id
    tasks = ShapesTasks(TRAIN, COVERAGE_SCENES, frame_size=TINY_FRAME_PX)
    texts = []
    for seed in tasks.seeds:
        for q in tasks.info(seed).questions:
            texts += [analysis_prompt(q.question, q.options), answer_prompt(q.question, q.options, [1.5, 12.0])]
    texts += [CAPTION_PROMPT, describe({"red circle", "cyan cross"}), describe(set())]
    unknown = {text for text in texts if unk in tokenizer(text)["input_ids"]}
    assert texts and not unknown
    assert len(vocabulary()) == len(set(vocabulary()))
    assert tokenizer.convert_tokens_to_ids("A") != tokenizer.convert_tokens_to_ids("a")  # option letter, not article
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert tokenizer(IMAGE_TOKEN, add_special_tokens=False)["input_ids"] == [image_id]


def test_training_inputs_are_what_the_processor_builds_at_inference(tiny_clip_dir: Path) -> None:
    model, processor = build_vlm(tiny_clip_dir, TINY_VLM)
    encoder = Encoder(processor, image_tokens(model.config.vision_config), ImagePreprocessor.from_dir(tiny_clip_dir))
    example = ShapesTasks(TRAIN, 3, frame_size=TINY_FRAME_PX, qa_frames=2).qa(np.random.default_rng(0))
    text = processor.apply_chat_template(chat_messages(len(example.images), example.prompt), tokenize=False,
                                         add_generation_prompt=True)
    reference = processor(images=example.images, text=text, return_tensors="np")
    assert encoder.prompt_ids(len(example.images), example.prompt) == reference["input_ids"][0].tolist()
    batch = encoder.batch([example])
    np.testing.assert_allclose(batch.pixel_values, reference["pixel_values"], atol=1e-4)


def test_a_missing_clip_names_the_command_that_makes_one(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match="groundloop train clip"):
        build_vlm(tmp_path / "no_clip", TINY_VLM)
