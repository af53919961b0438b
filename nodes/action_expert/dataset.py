"""Demo episodes → training windows for the action expert.

A demo directory holds `meta.json` and `episode_<seed:06d>.npz` files written by
`groundloop sim demos` (cloud_xyz in the camera frame, T_base_camera, ee_pose, gripper, action,
waypoints_base, ...). Each window is n_obs_steps observations and `horizon` actions, padded at the
episode ends like diffusion_policy's SequenceSampler: before the start with the first action, after
the end with "hold" actions (zero motion, last gripper command) so the expert learns to stay put
once the task is done instead of repeating the last motion.

Observations are expressed relative to the end-effector (the lesson of the earlier prototype):
points as base-frame offsets from the ee position, guidance from `guidance.episode_guidance`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.guidance import episode_guidance

_DEMOS_COMMAND = "groundloop sim demos --task {task} -n 200"


class MissingDemosError(FileNotFoundError):
    """A demo directory that does not exist or holds no episodes."""


def build_state(ee_pose: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """(..., 7) ee pose + (...,) gripper → (..., 8) state; quaternion sign fixed (w >= 0) so q and −q agree."""
    ee_pose = np.asarray(ee_pose, dtype=np.float32)
    quat = ee_pose[..., 3:7] * np.where(ee_pose[..., 3:4] < 0, -1.0, 1.0).astype(np.float32)
    return np.concatenate([ee_pose[..., :3], quat, np.asarray(gripper, np.float32)[..., None]], axis=-1)


def cloud_camera_to_base(cloud_xyz: np.ndarray, T_base_camera: np.ndarray) -> np.ndarray:
    """(..., N, 3) camera-frame points → robot base frame."""
    T = np.asarray(T_base_camera, dtype=np.float32)
    return np.asarray(cloud_xyz, dtype=np.float32) @ T[:3, :3].T + T[:3, 3]


@dataclass
class Episode:
    """One demo, already converted to the expert's inputs."""

    state: np.ndarray  # (T, 8)
    guidance: np.ndarray  # (T, 10)
    action: np.ndarray  # (T, 7)
    ee_xyz: np.ndarray  # (T, 3) base frame
    points_base: np.ndarray | None  # (T, N, 3) base frame, None when clouds are not loaded
    name: str


def _make_demos_hint(data_dir: Path) -> str:
    task = data_dir.name if data_dir.name.endswith(("-v0", "-v1")) else "PickCube-v1"
    return f"make it with `{_DEMOS_COMMAND.format(task=task)}`"


def demo_files(data_dir: Path) -> list[Path]:
    """The successful episodes that `meta.json` lists (the generator's contract: a listed file is
    complete, so a directory still being written is read safely); a missing or empty directory names
    the command that makes it."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        state = "has no meta.json" if data_dir.is_dir() else "does not exist"
        raise MissingDemosError(f"demo directory {data_dir} {state}; {_make_demos_hint(data_dir)}")
    episodes = json.loads(meta_path.read_text()).get("episodes", [])
    return [data_dir / e["file"] for e in episodes if e.get("success") and e.get("file")]


def load_episode(path: Path, config: ActionExpertConfig, *, load_point_cloud: bool) -> Episode:
    """Read one npz and derive state, guidance and (optionally) base-frame points."""
    with np.load(path) as data:
        ee_pose = data["ee_pose"].astype(np.float64)  # (T, 7)
        guidance, _ = episode_guidance(
            ee_pose,
            data["waypoints_base"],
            lookahead_m=config.lookahead_m,
            reach_tolerance_m=config.reach_tolerance_m,
            resolution_m=config.path_resolution_m,
            spline_degree=config.spline_degree,
        )
        points_base = None
        if load_point_cloud:
            points_base = cloud_camera_to_base(data["cloud_xyz"], data["T_base_camera"])  # (T, N, 3)
        return Episode(
            state=build_state(ee_pose, data["gripper"]),
            guidance=guidance,
            action=data["action"].astype(np.float32),
            ee_xyz=ee_pose[:, :3].astype(np.float32),
            points_base=points_base,
            name=f"{path.parent.name}/{path.stem}",
        )


def load_episodes(data_dirs: list[Path], config: ActionExpertConfig, *, load_point_cloud: bool) -> list[Episode]:
    """All successful episodes of all directories."""
    episodes = [
        load_episode(path, config, load_point_cloud=load_point_cloud)
        for data_dir in data_dirs
        for path in demo_files(Path(data_dir))
    ]
    if not episodes:
        raise MissingDemosError(
            f"no successful demos in {', '.join(map(str, data_dirs))}; {_make_demos_hint(Path(data_dirs[0]))}"
        )
    return episodes


class DemoDataset(Dataset):
    """Windows over episodes: dicts of "state" (To, 8), "guidance" (To, 10), "action" (H, 7)
    and, with point clouds, "points" (To, P, 3) relative to each step's ee position."""

    def __init__(self, episodes: list[Episode], config: ActionExpertConfig, *, use_point_cloud: bool) -> None:
        if use_point_cloud and any(ep.points_base is None for ep in episodes):
            raise ValueError("use_point_cloud=True needs episodes loaded with load_point_cloud=True")
        self.episodes = episodes
        self.config = config
        self.use_point_cloud = use_point_cloud
        # padded actions: row 0 repeats the first action, the last row is "hold" (zero motion, last gripper)
        self._padded_actions = []
        for ep in episodes:
            hold = np.zeros_like(ep.action[-1])
            hold[-1] = ep.action[-1, -1]
            self._padded_actions.append(np.concatenate([ep.action[:1], ep.action, hold[None]]))
        # one window per step: the window's last observation runs over every step of the episode
        To = config.n_obs_steps
        self.index = [
            (e, start) for e, ep in enumerate(episodes) for start in range(-(To - 1), len(ep.action) - To + 1)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, start = self.index[i]
        ep, cfg = self.episodes[e], self.config
        T = len(ep.action)
        obs_t = np.clip(start + np.arange(cfg.n_obs_steps), 0, T - 1)  # (To,)
        act_t = np.clip(start + np.arange(cfg.horizon), -1, T) + 1  # (H,) into the padded actions
        item = {
            "state": torch.from_numpy(ep.state[obs_t]),
            "guidance": torch.from_numpy(ep.guidance[obs_t]),
            "action": torch.from_numpy(self._padded_actions[e][act_t]),
        }
        if self.use_point_cloud:
            n_cloud = ep.points_base.shape[1]
            if n_cloud >= cfg.n_points:
                pick = torch.randperm(n_cloud)[: cfg.n_points].numpy()
            else:
                pick = torch.randint(n_cloud, (cfg.n_points,)).numpy()
            points = ep.points_base[obs_t][:, pick] - ep.ee_xyz[obs_t][:, None, :]  # (To, P, 3)
            item["points"] = torch.from_numpy(points)
        return item

    def normalizer_data(self, max_point_frames: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
        """Samples to fit the normalizer on: every step's state, guidance and action, plus the
        ee-relative points of up to `max_point_frames` random frames."""
        data = {
            "state": np.concatenate([ep.state for ep in self.episodes]),
            "guidance": np.concatenate([ep.guidance for ep in self.episodes]),
            "action": np.concatenate(self._padded_actions),
        }
        if self.use_point_cloud:
            rng = np.random.default_rng(seed)
            frames = [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep.action))]
            chosen = rng.choice(len(frames), size=min(max_point_frames, len(frames)), replace=False)
            data["points"] = np.concatenate(
                [self.episodes[e].points_base[t] - self.episodes[e].ee_xyz[t] for e, t in (frames[c] for c in chosen)]
            )
        return data
