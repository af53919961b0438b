"""`groundloop train uground` on a tiny config: 3 CLI steps (mode 1, then mode 3) write a checkpoint that
loads and segments, with held-out gIoU / cIoU / empty accuracy per variant in its record; --resume continues;
a run starts from a trained VLM and stores float16 weights that load as float32; a missing CLIP is an error
naming `groundloop train clip`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.uground.data import ReferringSource
from nodes.uground.evaluate import DEFAULT_VARIANTS, MODE1, MODE3, NO_MASK_PROMPT, predict
from nodes.shapes_vlm.config import VlmShapesConfig
from nodes.shapes_vlm.model import build_vlm, save_vlm_dir
from nodes.uground.model import META_FILE, VLM_DIR, load_uground
from nodes.uground.train import METRICS_FILE, STATE_FILE, register
from sim.shapes_world.dataset import HELDOUT

TINY_ARGS = ["--hidden-size", "32", "--layers", "2", "--heads", "2", "--sam-patch-size", "32", "--batch-size", "2",
             "--train-scenes", "4", "--eval-scenes", "1", "--eval-samples", "2", "--image-size", "64",
             "--threads", "1", "--no-progress", "--last-layer-share", "0.5", "--reward", "sample", "--log-every", "1"]


INIT_VLM = VlmShapesConfig(hidden_size=48, layers=1, heads=2, kv_heads=2, max_positions=128)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="model", required=True))
    return parser


def test_cli_trains_three_steps_and_writes_a_loadable_checkpoint(tiny_clip_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out, runs = tmp_path / "uground", tmp_path / "runs"
    args = _parser().parse_args(["uground", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir", str(runs),
                                 "--steps", "3", *TINY_ARGS])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "held-out mode1 after 3 steps" in printed and "empty_accuracy" in printed
    record = json.loads((out / META_FILE).read_text())
    assert record["train"]["step"] == 3 and record["train"]["final"] and record["config"]["reward"] == "sample"
    for variant in (MODE1, MODE3, NO_MASK_PROMPT, "layer0", "layer2"):
        assert {"giou", "ciou", "empty_accuracy", "target_accuracy"} <= set(record["heldout"][variant])
    rows = [json.loads(line) for line in (runs / METRICS_FILE).read_text().splitlines()]
    assert [row["mode"] for row in rows] == [1, 1, 3]  # the last-layer share, then the policy
    assert all(np.isfinite(row["total"]) for row in rows)
    model, encoder = load_uground(out)
    samples = ReferringSource(HELDOUT, 1, 64).all_samples(limit=3)
    answers = predict(model, encoder, encoder.batch(samples), DEFAULT_VARIANTS, torch.device("cpu"))
    assert all(p.mask.shape == (64, 64) for p in answers[MODE3])

    resumed = _parser().parse_args(["uground", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir",
                                    str(runs), "--steps", "4", "--resume", *TINY_ARGS])
    assert resumed.func(resumed) == 0
    assert json.loads((out / META_FILE).read_text())["train"]["step"] == 4 and (runs / STATE_FILE).is_file()


def test_a_run_can_start_from_a_trained_vlm_and_store_half_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    init = tmp_path / "vlm"
    torch.manual_seed(1)
    vlm, processor = build_vlm(tiny_clip_dir, INIT_VLM)
    save_vlm_dir(vlm, processor, INIT_VLM, init, {"train": {"note": "random weights (tests)"}})
    out = tmp_path / "uground"
    args = _parser().parse_args(["uground", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir",
                                 str(tmp_path / "runs"), "--steps", "1", "--init-vlm", str(init), "--vlm-lr", "0",
                                 "--half-weights", *TINY_ARGS])
    assert args.func(args) == 0
    record = json.loads((out / META_FILE).read_text())
    assert record["config"]["vlm"] == INIT_VLM.to_dict() and record["weights_dtype"] == "torch.float16"
    with safe_open(str(out / VLM_DIR / "model.safetensors"), "pt") as stored:
        assert all(stored.get_tensor(key).dtype == torch.float16 for key in stored.keys())
    model, _ = load_uground(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    trained_head = model.vlm.model.multi_modal_projector.linear_1.weight  # vlm lr 0: the init's, to float16 precision
    assert torch.allclose(trained_head, vlm.model.multi_modal_projector.linear_1.weight, atol=1e-3)


def test_a_missing_clip_is_an_error_naming_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["uground", "--clip", str(tmp_path / "no_clip"), "--out", str(tmp_path / "u"),
                                 "--steps", "1", *TINY_ARGS])
    assert args.func(args) == 2
    assert "groundloop train clip" in capsys.readouterr().err
