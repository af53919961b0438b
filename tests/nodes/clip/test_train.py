"""The CLIP trainer on a tiny config: a few steps write a model directory that transformers loads
(tokenizer included) with the held-out AUC in its record; resume continues; the loss, the schedule
and the AUC behave on hand-made inputs."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.clip.data import retrieval_auc
from nodes.clip.model import META_FILE
from nodes.clip.train import STATE_FILE, TrainOptions, contrastive_loss, learning_rate, register, train_clip
from tests.nodes.clip.tiny import TINY_CONFIG

TINY_RUN = dict(batch_size=8, train_scenes=6, eval_scenes=4, eval_images=16, frame_size=64, threads=1,
                progress=False, log_every=1, warmup_steps=2)


def test_three_steps_write_a_loadable_model_with_its_tokenizer_and_auc(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, CLIPModel

    config = replace(TINY_CONFIG, image_mean=None, image_std=None)
    options = TrainOptions(out=tmp_path / "clip", ckpt_dir=tmp_path / "run", steps=3, **TINY_RUN)
    summary = train_clip(options, config)
    assert summary["step"] == 3 and 0.0 <= summary["heldout"]["auc"] <= 1.0
    model = CLIPModel.from_pretrained(tmp_path / "clip", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "clip", local_files_only=True)
    ids = tokenizer(["a red circle"], return_tensors="pt")
    assert model.get_text_features(**ids).pooler_output.shape == (1, TINY_CONFIG.projection_dim)
    record = json.loads((tmp_path / "clip" / META_FILE).read_text())
    assert record["train"]["step"] == 3 and record["train"]["final"]
    assert record["heldout"]["auc"] == summary["heldout"]["auc"] and record["heldout"]["step"] == 3
    assert len(record["config"]["image_mean"]) == 3  # measured on training frames
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "heldout_auc" in rows[-1]

    resumed = train_clip(TrainOptions(out=tmp_path / "clip", ckpt_dir=tmp_path / "run", steps=5, resume=True,
                                      **TINY_RUN))
    assert resumed["step"] == 5
    assert torch.load(tmp_path / "run" / STATE_FILE, weights_only=False)["step"] == 5


def test_cli_trains_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="model", required=True))
    args = parser.parse_args(["clip", "--out", str(tmp_path / "m"), "--ckpt-dir", str(tmp_path / "r"), "--steps", "2",
                              "--image-size", "32", "--patch-size", "8", "--layers", "1", "--width", "32",
                              "--heads", "2", "--batch-size", "8", "--train-scenes", "4", "--eval-images", "16",
                              "--threads", "1", "--no-progress"])
    assert args.func(args) == 0
    assert "held-out retrieval AUC" in capsys.readouterr().out
    assert (tmp_path / "m" / "tokenizer.json").is_file() and (tmp_path / "m" / "preprocessor_config.json").is_file()


def test_loss_counts_every_fitting_caption_as_a_positive() -> None:
    image = torch.eye(3)  # (3, D): three distinct images
    text = torch.eye(3)[[0, 0, 2]]  # captions 0 and 1 are the same text
    scale = torch.tensor(10.0)
    diagonal_only = contrastive_loss(image, text, scale, torch.eye(3, dtype=torch.bool))
    both_fit = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert contrastive_loss(image[[0, 0, 2]], text, scale, both_fit) < diagonal_only


def test_schedule_warms_up_then_decays_by_steps_or_time() -> None:
    by_steps = TrainOptions(steps=1000, lr=1e-3, warmup_steps=10)
    assert learning_rate(by_steps, 0, 0.0) == pytest.approx(1e-4)
    assert learning_rate(by_steps, 10, 0.0) == pytest.approx(1e-3, rel=1e-3)
    assert learning_rate(by_steps, 1000, 0.0) == pytest.approx(5e-5)
    by_time = TrainOptions(minutes=1.0, lr=1e-3, warmup_steps=10)
    assert learning_rate(by_time, 500, 30.0) == pytest.approx(0.5 * (1e-3 + 5e-5))
    assert TrainOptions().budget_s == 20 * 60.0


def test_retrieval_auc_is_one_for_perfect_embeddings() -> None:
    labels = ["red circle", "red square", "blue circle"]
    label_embeds = np.eye(3, dtype=np.float32)
    visible = [frozenset({"red circle"}), frozenset({"blue circle", "red square"}), frozenset()]
    images = np.stack([label_embeds[0], (label_embeds[1] + label_embeds[2]) / np.sqrt(2), np.zeros(3)])
    assert retrieval_auc(images, visible, label_embeds, labels) == {"auc": 1.0, "hard_auc": 1.0}
    assert retrieval_auc(-images, visible, label_embeds, labels)["auc"] == 0.0
