"""The VLM trainer on a tiny config: one step of each stage trains exactly the parts it names and stays
finite; the CLI runs 3 steps through both stages and writes a loadable checkpoint with held-out
metrics; resume continues; a missing CLIP is an error naming `groundloop train clip`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.clip.model import MissingModelError
from nodes.clip.processing import ImagePreprocessor
from nodes.shapes_vlm.config import VlmShapesConfig, image_tokens
from nodes.shapes_vlm.data import CAPTION, IGNORE_INDEX, QA, QA_LETTER, RELEVANCE, Batch, Encoder, ShapesTasks
from nodes.shapes_vlm.model import LM, META_FILE, PROJECTOR, VISION, build_vlm, model_parts
from nodes.shapes_vlm.train import (DEFAULT_STAGES, STATE_FILE, Stage, Tally, TrainOptions, load_init_weights,
                                    parse_mix, prepare_stage, register, stage_at, train_step, train_vlm)
from nodes.train_budget import warmup_cosine_lr
from nodes.vlm import load_vlm
from sim.shapes_world.dataset import TRAIN
from tests.nodes.shapes_vlm.conftest import TINY_FRAME_PX, TINY_VLM

ALIGN, TASKS = DEFAULT_STAGES
PROJECTOR_ONLY = Stage("projector only", {CAPTION: 1.0}, (PROJECTOR,), 1.0)
TINY_ARGS = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--batch-size", "2", "--train-scenes", "4",
             "--eval-scenes", "2", "--eval-relevance", "4", "--eval-qa", "2", "--eval-captions", "2",
             "--frame-size", str(TINY_FRAME_PX), "--qa-frames", "2", "--threads", "1", "--no-progress"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="model", required=True))
    return parser


@pytest.mark.parametrize("stage, vision_lr, trained", [
    (ALIGN, 0.0, {PROJECTOR, LM}),
    (TASKS, 0.0, {PROJECTOR, LM}),
    (TASKS, 1e-3, {VISION, PROJECTOR, LM}),
    (PROJECTOR_ONLY, 1e-3, {PROJECTOR}),
])
def test_one_step_of_a_stage_trains_only_its_parts(tiny_clip_dir: Path, stage: Stage, vision_lr: float,
                                                   trained: set[str]) -> None:
    torch.manual_seed(0)
    model, processor = build_vlm(tiny_clip_dir, TINY_VLM)
    encoder = Encoder(processor, image_tokens(model.config.vision_config), ImagePreprocessor.from_dir(tiny_clip_dir))
    tasks = ShapesTasks(TRAIN, 3, frame_size=TINY_FRAME_PX, qa_frames=2)
    parts = model_parts(model)
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in parts.items()}
    optimizer = prepare_stage(model, stage, TrainOptions(vision_lr=vision_lr))
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"]
    rng = np.random.default_rng(0)
    for task in stage.mix:  # one step on a batch of each of the stage's tasks
        batch = encoder.batch([tasks.sample(task, rng) for _ in range(2)])
        loss = train_step(model, batch, optimizer, torch.device("cpu"))
        assert torch.isfinite(loss)
    for name, module in parts.items():
        after = list(module.parameters())
        assert all(torch.isfinite(p).all() for p in after)
        changed = [not torch.equal(b, a) for b, a in zip(before[name], after)]
        assert any(changed) if name in trained else not any(changed), name


def test_stages_split_the_budget_and_each_warms_up_then_decays() -> None:
    options = TrainOptions(steps=100)
    assert stage_at(options, 0.0) == (0, 0.0)
    assert stage_at(options, 0.15)[0] == 0 and stage_at(options, 0.15)[1] == pytest.approx(0.5)
    assert stage_at(options, 0.3) == (1, pytest.approx(0.0))
    assert stage_at(options, 1.0) == (2, 1.0)
    assert warmup_cosine_lr(1e-3, 10, 0, 0.0) == pytest.approx(1e-4)
    assert warmup_cosine_lr(1e-3, 10, 10, 0.0) == pytest.approx(1e-3)
    assert warmup_cosine_lr(1e-3, 10, 50, 1.0) == pytest.approx(5e-5)


def test_cli_trains_three_steps_and_writes_a_checkpoint_with_heldout_metrics(
        tiny_clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, run = tmp_path / "vlm", tmp_path / "run"
    args = _parser().parse_args(["vlm", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir", str(run),
                                 "--steps", "3", "--log-every", "1", *TINY_ARGS])
    assert args.func(args) == 0
    assert "QA accuracy" in capsys.readouterr().out
    record = json.loads((out / META_FILE).read_text())
    assert record["train"]["step"] == 3 and record["train"]["final"] and record["train"]["clip"] == str(tiny_clip_dir)
    held = record["heldout"]
    assert held["step"] == 3 and held["relevance_n"] == 4 and held["qa_n"] == 2 and held["caption_n"] == 2
    assert all(0.0 <= held[k] <= 1.0 for k in ("relevance_exact", "relevance_within1", "qa_accuracy", "caption_exact"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["stage"] for r in rows] == ["align", "tasks", "tasks"]
    assert "heldout_relevance_exact" in rows[-1]
    answer = load_vlm({"hf": str(out), "device": "cpu"}).generate([np.zeros((64, 64, 3), np.uint8)], "Which shapes?",
                                                                   max_new_tokens=3)
    assert isinstance(answer[0], str)

    options = TrainOptions(clip=tiny_clip_dir, out=out, ckpt_dir=run, steps=4, resume=True, batch_size=2,
                           train_scenes=4, eval_scenes=2, eval_relevance=2, eval_qa=2, eval_captions=2,
                           frame_size=TINY_FRAME_PX, qa_frames=2, threads=1, progress=False, log_every=1)
    assert train_vlm(options)["step"] == 4
    assert torch.load(run / STATE_FILE, weights_only=False)["step"] == 4


def test_cli_records_the_qa_target_and_the_task_mix(tiny_clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "vlm"
    args = _parser().parse_args(["vlm", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir",
                                 str(tmp_path / "run"), "--steps", "1", "--align-share", "0", "--qa-target", QA_LETTER,
                                 "--task-mix", "qa=0.7, relevance=0.15,caption=0.15", *TINY_ARGS])
    assert args.func(args) == 0
    train = json.loads((out / META_FILE).read_text())["train"]
    assert train["qa_target"] == QA_LETTER
    assert train["stages"][1]["mix"] == {QA: 0.7, RELEVANCE: 0.15, CAPTION: 0.15}
    assert _parser().parse_args(["vlm"]).qa_target == "text"


@pytest.mark.parametrize("text", ["", "qa", "qa=x", "qa=0", "qa=-1", "answers=1", "qa=1,speech=1"])
def test_a_bad_task_mix_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--task-mix"):
        parse_mix(text)


def test_an_answer_counts_only_when_greedy_decoding_emits_all_of_it() -> None:
    labels = np.full((2, 5), IGNORE_INDEX, np.int64)
    labels[:, 2:5] = [7, 8, 3]  # a two-token answer and [EOS] after a two-token prompt
    batch = Batch(QA, np.zeros((2, 5), np.int64), np.ones((2, 5), np.int64), labels, np.zeros((0, 3, 4, 4), np.float32),
                  np.array([0, 1]))
    logits = torch.zeros(2, 5, 10)  # (B, T, V): the token predicted after each position
    logits[:, 1, 7] = logits[:, 2, 8] = logits[:, 3, 3] = 1.0  # row 0: the whole answer
    logits[1, 2, 8], logits[1, 2, 9] = 0.0, 1.0  # row 1: the first token right, the second wrong
    tally = Tally(score_digits=[1, 2, 3, 4, 5])
    tally.add(batch, logits)
    assert tally.answers == [True, False] and tally.metrics()["qa_accuracy"] == 0.5


def test_a_missing_clip_is_an_error_naming_the_clip_trainer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(MissingModelError, match="groundloop train clip"):
        train_vlm(TrainOptions(clip=tmp_path / "no_clip", out=tmp_path / "vlm", ckpt_dir=tmp_path / "run", steps=1))
    args = _parser().parse_args(["vlm", "--clip", str(tmp_path / "no_clip"), "--out", str(tmp_path / "vlm"),
                                 "--steps", "1", *TINY_ARGS])
    assert args.func(args) == 2
    assert "groundloop train clip" in capsys.readouterr().err
    assert not (tmp_path / "vlm").exists()


def test_init_starts_from_a_trained_vlm_and_refuses_another_architecture(tiny_clip_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    base = ["--clip", str(tiny_clip_dir), "--steps", "1", *TINY_ARGS]
    args = _parser().parse_args(["vlm", "--out", str(first), "--ckpt-dir", str(tmp_path / "r1"), *base])
    assert args.func(args) == 0
    trained = load_vlm({"hf": str(first), "device": "cpu"}).model.state_dict()
    options = TrainOptions(clip=tiny_clip_dir, out=second, ckpt_dir=tmp_path / "r2", init=first, steps=1, lr=0.0,
                           batch_size=2, train_scenes=4, eval_scenes=2, eval_relevance=2, eval_qa=2, eval_captions=2,
                           frame_size=TINY_FRAME_PX, qa_frames=2, threads=1, progress=False)
    train_vlm(options)  # one step at lr 0: the written model is the init's weights, unchanged
    copied = load_vlm({"hf": str(second), "device": "cpu"}).model.state_dict()
    assert all(torch.equal(trained[k], copied[k]) for k in trained)
    assert json.loads((second / META_FILE).read_text())["train"]["init"] == str(first)

    same = VlmShapesConfig(hidden_size=32, layers=1, heads=2, kv_heads=2)  # what TINY_ARGS build
    other, _ = build_vlm(tiny_clip_dir, same)
    wider, _ = build_vlm(tiny_clip_dir, VlmShapesConfig(hidden_size=64, layers=1, heads=2, kv_heads=2))
    load_init_weights(other, first)  # the same architecture loads
    with pytest.raises(ValueError, match="do not fit this VLM"):
        load_init_weights(wider, first)
