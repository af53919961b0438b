"""Replaying a generated demo's actions from its seed reproduces it; perturbed actions do not."""
from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sim import cli
from sim.dataset import episode_path, generate_demos, load_episode
from sim.maniskill_robot import ManiSkillRobot
from sim.replay import REPLAY_MAX_STEPS, ReplayReport, replay_episode, rotation_error

TASK = "PickCube-v1"
SEED = 0
MAX_REPLAY_POS_ERROR_M = 0.01
PERTURB_SCALE = 0.5


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("demos") / TASK
    generate_demos(TASK, 1, out, seed_start=SEED, progress=False)
    return load_episode(episode_path(out, SEED))


@pytest.fixture(scope="module")
def state_robot() -> Iterator[ManiSkillRobot]:
    robot = ManiSkillRobot(TASK, max_episode_steps=REPLAY_MAX_STEPS, camera=None)
    robot.connect()
    yield robot
    robot.disconnect()


def test_rotation_error_is_sign_invariant() -> None:
    q = np.array([0.0, 1.0, 0.0, 0.0])
    assert rotation_error(q, -q) == pytest.approx(0.0, abs=1e-12)
    half_turn_z = np.array([np.cos(0.25), 0.0, 0.0, np.sin(0.25)])  # 0.5 rad about z
    assert rotation_error(np.array([1.0, 0, 0, 0]), half_turn_z) == pytest.approx(0.5)


@pytest.mark.slow
def test_replay_from_seed_matches_the_recording(episode: dict[str, np.ndarray], state_robot: ManiSkillRobot) -> None:
    report = replay_episode(episode, TASK, robot=state_robot)
    T = len(episode["action"])
    assert isinstance(report, ReplayReport) and report.seed == SEED
    assert report.pos_error.shape == (T,) and report.rot_error.shape == (T,)
    summary = report.summary()
    print("replay divergence:", summary)
    assert summary["max_pos_error_m"] < MAX_REPLAY_POS_ERROR_M
    assert report.success_matches and report.replay_success


@pytest.mark.slow
def test_perturbed_actions_diverge(episode: dict[str, np.ndarray], state_robot: ManiSkillRobot) -> None:
    perturbed = dict(episode, action=(episode["action"] * PERTURB_SCALE).astype(np.float32))
    report = replay_episode(perturbed, TASK, robot=state_robot)
    print("perturbed divergence:", report.summary())
    assert report.first_exceed is not None and report.first_exceed > 0
    assert report.pos_error.max() > MAX_REPLAY_POS_ERROR_M


def test_cli_replay_parses_episodes_and_threshold() -> None:
    parser = argparse.ArgumentParser(prog="groundloop")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", "replay", "--data", "d", "--episodes", "0,2", "--threshold", "0.01"])
    assert (args.data, args.episodes, args.threshold, args.task) == ("d", "0,2", 0.01, None)
    assert args.func is cli._replay
