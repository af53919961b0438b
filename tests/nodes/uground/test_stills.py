"""UGround on grounded-picking stills: each still gives "the <colour> cube" for every palette colour (its
pixels, or [REJ] when the scene has none) and "all cubes"; a mixed source draws by share; a tiny run
fine-tunes a trained UGround on the mix, growing its vocabulary, and reports the held-out stills apart."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.uground.model import META_FILE, build_uground, load_uground, save_uground_dir
from nodes.uground.stills import ALL_CUBES, GroundedStillsSource, MixedSource, cube_expression
from nodes.uground.train import STILLS_KEY, register
from sim.grounded_stills import FORMAT, INDEX_NAME, STILLS_NAME
from sim.shapes_world.referring import ATTRIBUTE, EMPTY, MULTI
from tests.nodes.uground.conftest import STILL_PX, TINY
from tests.nodes.uground.test_train import TINY_ARGS

PALETTE = ["red", "green", "blue"]


def write_stills(directory: Path, n: int = 4, size: int = STILL_PX) -> Path:
    """`n` stills in grounded_stills' format: a red and a green cube drawn (blue absent); in the last still the
    green one is hidden (drawn, no pixels)."""
    labels = np.zeros((n, size, size), np.uint8)
    labels[:, 8:16, 8:16] = 1  # red
    labels[:-1, 30:38, 40:48] = 2  # green, hidden in the last still
    images = np.zeros((n, size, size, 3), np.uint8)
    images[labels == 1] = (230, 20, 20)
    images[labels == 2] = (20, 200, 30)
    present = np.tile(np.array([True, True, False]), (n, 1))
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / STILLS_NAME, images=images, labels=labels, seeds=np.arange(n), steps=np.zeros(n, np.int64),
             present=present, target=np.zeros(n, np.int64))
    (directory / INDEX_NAME).write_text(json.dumps({"format": FORMAT, "palette": PALETTE, "crop": [0, 0, size, size],
                                                    "size": size}))
    return directory


def test_each_still_names_every_colour_and_all_cubes(tmp_path: Path) -> None:
    source = GroundedStillsSource(write_stills(tmp_path / "stills"))
    first = {text: (mask, kind) for text, mask, kind in source.expressions(0)}
    assert list(first) == [cube_expression("red"), cube_expression("green"), cube_expression("blue"), ALL_CUBES]
    assert first["the red cube"][1] == ATTRIBUTE and first["the red cube"][0].sum() == 64
    assert first["the blue cube"][1] == EMPTY and not first["the blue cube"][0].any()
    assert first[ALL_CUBES][1] == MULTI and first[ALL_CUBES][0].sum() == 128
    hidden = [text for text, _, _ in source.expressions(3)]
    assert "the green cube" not in hidden  # drawn but not visible: neither a target nor an absent one
    samples = source.all_samples()
    assert len(samples) == 3 * 4 + 3
    assert [s.expression for s in source.all_samples(limit=5)] == [s.expression for s in samples[:5]]
    assert all(s.image.shape == (STILL_PX, STILL_PX, 3) and s.target.shape == (STILL_PX, STILL_PX) for s in samples)


def test_a_mixed_source_draws_by_share(tmp_path: Path) -> None:
    class Constant:
        def __init__(self, name: str) -> None:
            self.name = name

        def sample(self, rng: np.random.Generator) -> str:
            return self.name

    rng = np.random.default_rng(0)
    counts = Counter(MixedSource([Constant("a"), Constant("b")], [0.75, 0.25]).sample(rng) for _ in range(4000))
    assert 0.72 < counts["a"] / 4000 < 0.78
    with pytest.raises(ValueError, match="one share per source"):
        MixedSource([Constant("a")], [0.5, 0.5])
    with pytest.raises(ValueError, match=">= 0"):
        MixedSource([Constant("a"), Constant("b")], [1.5, -0.5])


def test_a_trained_uground_fine_tunes_on_the_stills_and_reports_them_apart(tiny_clip_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.uground.model as model_module

    monkeypatch.setattr(model_module, "STILLS_WORDS", ())  # a UGround trained before "cube" was a word
    torch.manual_seed(0)
    old, old_encoder = build_uground(tiny_clip_dir, TINY)
    trained = save_uground_dir(old, old_encoder, tmp_path / "trained", {"train": {"note": "random weights (tests)"}})
    monkeypatch.undo()
    stills = write_stills(tmp_path / "stills")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="model", required=True))
    out = tmp_path / "tuned"
    args = parser.parse_args(["uground", "--clip", str(tiny_clip_dir), "--out", str(out), "--ckpt-dir",
                              str(tmp_path / "runs"), "--steps", "2", "--init-uground", str(trained), "--stills",
                              str(stills), "--stills-share", "0.5", "--stills-eval", str(stills),
                              "--stills-eval-expressions", "6", *TINY_ARGS])
    assert args.func(args) == 0
    record = json.loads((out / META_FILE).read_text())
    assert record["train"]["init_uground"] == str(trained) and record["train"]["stills"] == str(stills)
    assert record["config"]["vlm"] == TINY.vlm.to_dict()  # the trained model's sizes, not the CLI's
    on_stills = record["heldout"][STILLS_KEY]
    assert on_stills["n_expressions"] == 6 and {"giou", "ciou", "empty_accuracy"} <= set(on_stills["mode1"])
    model, encoder = load_uground(out)
    assert encoder.tokenizer.unk_token_id not in encoder.prompt_ids("all cubes")
    assert model.vlm.get_input_embeddings().weight.shape[0] == len(encoder.tokenizer)
