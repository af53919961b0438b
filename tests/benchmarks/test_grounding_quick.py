"""benchmarks/grounding.py's UGround part at a tiny scale, on the shipped models/uground_shapes (small and
fast on a CPU): the last line is one JSON object with every figure there, in range, and consistent (the
policy's layer counts cover every expression). Quality is not asserted."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import grounding
from nodes.uground.evaluate import MODE1, MODE3, NO_MASK_PROMPT

STILLS = 3
RATES = ("giou", "ciou", "empty_accuracy", "target_accuracy")


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """The small model gains nothing from a second thread on a shared two-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def in_unit(values: Any) -> bool:
    values = values if isinstance(values, list) else [values]
    return all(isinstance(v, float | int) and 0.0 <= v <= 1.0 for v in values)


def test_the_uground_part_reports_every_variant_layer_and_policy_pick(capsys: pytest.CaptureFixture[str],
                                                                       one_thread: None) -> None:
    assert grounding.main(["--uground-only", "--stills", str(STILLS), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["parts"] == [grounding.UGROUND] and grounding.KV_PROBE not in report
    part = report[grounding.UGROUND]
    assert part["stills"] == STILLS and len(part["seeds"]) == STILLS and part["model"] == grounding.DEFAULT_UGROUND
    n, layers = part["expressions"], part["layers"]
    assert n > part["empty_targets"] > 0  # these stills hold both kinds of expression

    assert set(part["variants"]) == {MODE1, MODE3, NO_MASK_PROMPT}
    for name, metrics in [*part["variants"].items(), (grounding.ALL_SHAPES, part[grounding.ALL_SHAPES])]:
        assert metrics["n"] == n and all(in_unit(metrics[key]) for key in RATES), name
        assert in_unit(list(metrics["giou_by_kind"].values())), name
    assert set(part["giou_vs_mode1"]) == {MODE3, NO_MASK_PROMPT}

    similarity = part["similarity_map"]
    assert similarity["n"] == n - part["empty_targets"] and similarity["threshold"] == grounding.ZERO_SHOT_THRESHOLD
    for figures in (similarity, part["layer_masks"]):
        assert len(figures["giou"]) == len(figures["ciou"]) == layers
        assert in_unit(figures["giou"]) and in_unit(figures["ciou"])

    policy = part["policy"]
    assert list(policy["layers"]) == [str(layer) for layer in range(layers)]
    assert sum(policy["layers"].values()) == policy["n"] == n
    assert len(policy["mean_probs"]) == layers and sum(policy["mean_probs"]) == pytest.approx(1.0, abs=1e-3)
    assert in_unit(policy["mean_probs"])

    assert any(line.startswith("UGround") for line in out[:-1])  # the table comes before the JSON


def test_the_picking_part_sets_uground_beside_the_colour_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 one_thread: None) -> None:
    from tests.nodes.uground.test_stills import write_stills

    stills = write_stills(tmp_path / "stills", n=2, size=128)
    assert grounding.main(["--picking-only", "--picking-stills", str(stills), "--device", "cpu", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    part = report[grounding.PICKING]
    assert report["parts"] == [grounding.PICKING] and part["stills"] == 2
    assert part["expressions"] == 4 + 3 and part["empty_targets"] == 2  # red, green, blue (absent), all; then no green
    assert set(part["variants"]) == {MODE1, MODE3, NO_MASK_PROMPT, grounding.COLOUR_BASELINE}
    for name, metrics in part["variants"].items():
        assert metrics["n"] == part["expressions"] and all(in_unit(metrics[key]) for key in ("giou", "ciou")), name
    baseline = part["variants"][grounding.COLOUR_BASELINE]
    assert baseline["empty_accuracy"] == 1.0  # no blue pixels: blue is absent
    assert baseline["giou_by_kind"]["attribute"] > 0.9 and baseline["giou_by_kind"]["multi"] == 0.0  # no "all"


def test_a_missing_uground_names_the_command_that_makes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    missing = tmp_path / "no_uground"
    assert grounding.main(["--uground-only", "--uground", str(missing)]) == grounding.EXIT_MISSING_MODEL
    assert f"groundloop train uground --out {missing}" in capsys.readouterr().err


def test_one_part_only_at_a_time() -> None:
    with pytest.raises(SystemExit):
        grounding.main(["--probe-only", "--uground-only"])
