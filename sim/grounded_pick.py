"""GroundedPickCube-v1: PickCube with distractors, where only the instruction says which cube to pick.

One cube per palette colour is built once (so the segmentation names carry the colour: `cube_green`);
each episode draws `num_cubes` of them from the seed, places them apart on PickCube's spawn square and
parks the rest out of every camera's view. The first one drawn is the target, named by the episode's
instruction ("pick the green cube"). Success is PickCube's (target within 2.5 cm of the goal, robot
static): `self.cube` is pointed at the target each episode, so PickCube's evaluation, rewards and our
`TaskSpec` (target attribute `cube`) apply unchanged. One sub-scene only (`num_envs=1`), as groundloop
runs ManiSkill; importing this module registers the task with ManiSkill, as ManiSkill's own tasks do.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import sapien
import torch

from mani_skill.envs.tasks.tabletop.pick_cube import PickCubeEnv
from mani_skill.utils.building import actors
from mani_skill.utils.registration import register_env
from mani_skill.utils.scene_builder.table import TableSceneBuilder
from mani_skill.utils.structs.actor import Actor
from mani_skill.utils.structs.pose import Pose

ENV_ID = "GroundedPickCube-v1"
#: colour name -> RGBA of the cube's material; hues far apart so a colour threshold can tell them apart
PALETTE: dict[str, tuple[float, float, float, float]] = {
    "red": (0.9, 0.05, 0.05, 1.0),
    "green": (0.05, 0.8, 0.1, 1.0),
    "blue": (0.05, 0.15, 0.95, 1.0),
    "yellow": (0.95, 0.85, 0.05, 1.0),
    "purple": (0.6, 0.1, 0.85, 1.0),
}
CUBE_NAME_PREFIX = "cube_"
INSTRUCTION_TEMPLATE = "pick the {colour} cube"
DEFAULT_NUM_CUBES = 3
#: cube centres at least this far apart: the open gripper (8 cm) descends on one without touching another
MIN_CUBE_SPACING_M = 0.085
#: the goal's footprint stays this far from every distractor, so no goal asks to push through a cube
MIN_GOAL_CLEARANCE_M = 0.06
MAX_PLACEMENT_TRIES = 1000
#: parked (unused) cubes stand on the floor behind both cameras, 1.5 m from the workspace
PARKING_XY = (1.5, 1.5)
PARKING_SPACING_M = 0.1
#: (x0, y0, x1, y1), x1/y1 exclusive: the square of the default 256×256 `CameraSpec` frame (the camera RobotNode
#: renders this task with) that holds every drawn cube at reset and the target cube anywhere up to its goal.
#: Measured with `sim.grounded_stills.measure_workspace_crop` over seeds 0..149: the union of all cubes'
#: segmentation pixels at reset (87, 118, 195, 196) and of each goal's projected box of half-extent
#: √3 · cube half-size (74, 27, 227, 202), grown by 8 px and squared about its centre: 191 px a side.
WORKSPACE_CROP: tuple[int, int, int, int] = (55, 19, 246, 210)


def cube_actor_name(colour: str) -> str:
    """Segmentation/actor name of the cube of `colour`."""
    return CUBE_NAME_PREFIX + colour


def colour_of_actor(name: str) -> str | None:
    """The palette colour of a cube actor's name, None for any other actor."""
    colour = name[len(CUBE_NAME_PREFIX):] if name.startswith(CUBE_NAME_PREFIX) else None
    return colour if colour in PALETTE else None


def instruction_for(colour: str) -> str:
    """The instruction that names the cube of `colour`."""
    return INSTRUCTION_TEMPLATE.format(colour=colour)


def sample_layout(rng: np.random.RandomState, num_cubes: int, spawn_half: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Colours (target first), cube xy (num_cubes, 2) at least MIN_CUBE_SPACING_M apart, and a yaw each."""
    if not 1 <= num_cubes <= len(PALETTE):
        raise ValueError(f"{ENV_ID}: num_cubes must be in 1..{len(PALETTE)}, got {num_cubes}")
    colours = [str(c) for c in rng.choice(list(PALETTE), size=num_cubes, replace=False)]
    for _ in range(MAX_PLACEMENT_TRIES):
        xy = rng.uniform(-spawn_half, spawn_half, size=(num_cubes, 2))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(num_cubes)
        if num_cubes == 1 or gaps.min() >= MIN_CUBE_SPACING_M:
            return colours, xy, rng.uniform(0.0, np.pi / 2, size=num_cubes)
    raise RuntimeError(f"{ENV_ID}: no layout of {num_cubes} cubes {MIN_CUBE_SPACING_M} m apart in "
                       f"{MAX_PLACEMENT_TRIES} tries (spawn half-size {spawn_half} m)")


def sample_goal(rng: np.random.RandomState, distractors_xy: np.ndarray, spawn_half: float, low_z: float,
                max_height: float) -> np.ndarray:
    """PickCube's goal (xy on the spawn square, height up to `max_height` above the cube's centre),
    kept clear of the distractors."""
    for _ in range(MAX_PLACEMENT_TRIES):
        xy = rng.uniform(-spawn_half, spawn_half, size=2)
        if len(distractors_xy) == 0 or np.linalg.norm(distractors_xy - xy, axis=-1).min() >= MIN_GOAL_CLEARANCE_M:
            return np.array([xy[0], xy[1], low_z + rng.uniform(0.0, max_height)])
    raise RuntimeError(f"{ENV_ID}: no goal {MIN_GOAL_CLEARANCE_M} m clear of the distractors in {MAX_PLACEMENT_TRIES} tries")


@register_env(ENV_ID, max_episode_steps=50)
class GroundedPickCubeEnv(PickCubeEnv):
    """PickCube with `num_cubes` cubes of distinct palette colours; the instruction names the target."""

    def __init__(self, *args: Any, num_cubes: int = DEFAULT_NUM_CUBES, **kwargs: Any) -> None:
        self.num_cubes = num_cubes  # checked by sample_layout at the first reset
        self.cubes: dict[str, Actor] = {}
        self.scene_colours: list[str] = []
        self.target_colour = ""
        super().__init__(*args, **kwargs)

    @property
    def instruction(self) -> str:
        """This episode's instruction, e.g. "pick the green cube"."""
        return instruction_for(self.target_colour)

    def _load_scene(self, options: dict) -> None:
        if self.num_envs != 1:
            raise ValueError(f"{ENV_ID} runs one sub-scene (num_envs=1), got {self.num_envs}")
        self.table_scene = TableSceneBuilder(self, robot_init_qpos_noise=self.robot_init_qpos_noise)
        self.table_scene.build()
        self.cubes = {colour: actors.build_cube(self.scene, half_size=self.cube_half_size, color=list(rgba),
                                                name=cube_actor_name(colour),
                                                initial_pose=sapien.Pose(p=self._parking_spot(i)))
                      for i, (colour, rgba) in enumerate(PALETTE.items())}
        self.cube = next(iter(self.cubes.values()))  # until the first episode picks its target
        self.goal_site = actors.build_sphere(self.scene, radius=self.goal_thresh, color=[0, 1, 0, 1], name="goal_site",
                                             body_type="kinematic", add_collision=False, initial_pose=sapien.Pose())
        self._hidden_objects.append(self.goal_site)

    def _parking_spot(self, index: int) -> list[float]:
        floor = -self.table_scene.table_height
        return [PARKING_XY[0] + PARKING_SPACING_M * index, PARKING_XY[1], floor + self.cube_half_size]

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict) -> None:
        with torch.device(self.device):
            self.table_scene.initialize(env_idx)
            rng = self._episode_rng
            colours, xy, yaws = sample_layout(rng, self.num_cubes, self.cube_spawn_half_size)
            centre = np.asarray(self.cube_spawn_center, dtype=np.float64)
            self.scene_colours, self.target_colour = colours, colours[0]
            for i, (colour, cube) in enumerate(self.cubes.items()):
                if colour in colours:
                    k = colours.index(colour)
                    p = [*(xy[k] + centre), self.cube_half_size]
                    q = [np.cos(yaws[k] / 2), 0.0, 0.0, np.sin(yaws[k] / 2)]
                else:
                    p, q = self._parking_spot(i), [1.0, 0.0, 0.0, 0.0]
                cube.set_pose(Pose.create_from_pq(torch.tensor(np.array([p], np.float32)),
                                                  torch.tensor(np.array([q], np.float32))))
            self.cube = self.cubes[self.target_colour]
            goal = sample_goal(rng, xy[1:], self.cube_spawn_half_size, self.cube_half_size, self.max_goal_height)
            goal[:2] += centre
            self.goal_site.set_pose(Pose.create_from_pq(torch.tensor(goal[None].astype(np.float32))))
