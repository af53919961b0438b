"""Shared ManiSkill fixtures: creating an env costs ~5 s, so the PickCube robot is built once."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.maniskill_robot import ManiSkillRobot


@pytest.fixture(scope="session")
def pick_robot() -> Iterator[ManiSkillRobot]:
    """A connected PickCube-v1 robot with the default camera."""
    robot = ManiSkillRobot("PickCube-v1")
    robot.connect()
    yield robot
    robot.disconnect()


@pytest.fixture(scope="session")
def grounded_robot() -> Iterator[ManiSkillRobot]:
    """A connected GroundedPickCube-v1 robot with the default camera."""
    from sim.tasks import GROUNDED_PICK_CUBE

    robot = ManiSkillRobot(GROUNDED_PICK_CUBE)
    robot.connect()
    yield robot
    robot.disconnect()
