"""The `sim` command group: argument parsing only (generation itself is tested in test_dataset)."""
from __future__ import annotations

import argparse

import pytest

from sim import cli


def parent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundloop")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_register_adds_sim_demos() -> None:
    args = parent_parser().parse_args(
        ["sim", "demos", "--task", "PushCube-v1", "-n", "5", "--out", "x", "--seed-start", "10"])
    assert (args.task, args.n, args.out, args.seed_start, args.n_points) == ("PushCube-v1", 5, "x", 10, 1024)
    assert args.func is cli._demos


def test_oracle_defaults_to_held_out_seeds() -> None:
    args = parent_parser().parse_args(["sim", "oracle"])
    assert args.task == "PickCube-v1" and args.seed_start >= 1000 and args.func is cli._oracle


def test_unknown_task_lists_the_supported_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demos", "--task", "PickBanana-v1"])
    err = capsys.readouterr().err
    assert "PickBanana-v1" in err and "PickCube-v1" in err and "StackCube-v1" in err
