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
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.guidance import episode_guidance
from nodes.action_expert.pack import is_pack, read_pack
from sim.lerobot_import import is_lerobot, read_lerobot

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
    """Read one episode npz of a demo directory."""
    with np.load(path) as data:
        return episode_from_arrays(data, f"{path.parent.name}/{path.stem}", config, load_point_cloud=load_point_cloud)


def episode_from_arrays(
    data: Mapping[str, np.ndarray], name: str, config: ActionExpertConfig, *, load_point_cloud: bool
) -> Episode:
    """Derive state, guidance and (optionally) base-frame points from an episode's arrays."""
    ee_pose = np.asarray(data["ee_pose"], dtype=np.float64)  # (T, 7)
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
        action=np.asarray(data["action"], dtype=np.float32),
        ee_xyz=ee_pose[:, :3].astype(np.float32),
        points_base=points_base,
        name=name,
    )


def load_episodes(data_paths: list[Path], config: ActionExpertConfig, *, load_point_cloud: bool) -> list[Episode]:
    """All successful episodes of all demo directories, packs (`nodes.action_expert.pack`) and
    LeRobot v3 exports (`sim.lerobot_export`)."""
    episodes = []
    for data_path in map(Path, data_paths):
        if is_pack(data_path):
            episodes += [
                episode_from_arrays(arrays, name, config, load_point_cloud=load_point_cloud)
                for name, arrays in read_pack(data_path)
            ]
        elif is_lerobot(data_path):
            episodes += [
                episode_from_arrays(arrays, name, config, load_point_cloud=load_point_cloud)
                for name, arrays in read_lerobot(data_path, images=False)
                if arrays["success"]
            ]
        else:
            episodes += [load_episode(path, config, load_point_cloud=load_point_cloud) for path in demo_files(data_path)]
    if not episodes:
        raise MissingDemosError(
            f"no successful demos in {', '.join(map(str, data_paths))}; {_make_demos_hint(Path(data_paths[0]))}"
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


class WindowSampler:
    """Random training batches of the windows `DemoDataset` defines, drawn by tensor indexing on the
    training device: a per-item Python loop cannot feed a GPU (or even two CPU cores) fast enough.

    Windows are drawn with replacement; each observation step gets its own random point subset.
    """

    def __init__(self, dataset: DemoDataset, device: torch.device) -> None:
        cfg, eps = dataset.config, dataset.episodes
        self.config, self.device, self.use_point_cloud = cfg, device, dataset.use_point_cloud
        lengths = torch.tensor([len(ep.action) for ep in eps])
        step_offset = torch.cumsum(lengths, 0) - lengths  # first row of each episode in the flat arrays
        action_offset = torch.cumsum(lengths + 2, 0) - (lengths + 2)  # padded actions: one row each side
        episode = torch.tensor([e for e, _ in dataset.index])
        self._start = torch.tensor([start for _, start in dataset.index], device=device)  # (W,)
        self._length = lengths[episode].to(device)
        self._step_offset = step_offset[episode].to(device)
        self._action_offset = action_offset[episode].to(device)
        self._state = torch.from_numpy(np.concatenate([ep.state for ep in eps])).to(device)  # (ΣT, 8)
        self._guidance = torch.from_numpy(np.concatenate([ep.guidance for ep in eps])).to(device)  # (ΣT, 10)
        self._action = torch.from_numpy(np.concatenate(dataset._padded_actions)).to(device)  # (Σ(T+2), 7)
        if self.use_point_cloud:
            self._points = torch.from_numpy(np.concatenate([ep.points_base for ep in eps])).to(device)  # (ΣT, N, 3)
            self._ee_xyz = torch.from_numpy(np.concatenate([ep.ee_xyz for ep in eps])).to(device)  # (ΣT, 3)
        self._obs_range = torch.arange(cfg.n_obs_steps, device=device)
        self._act_range = torch.arange(cfg.horizon, device=device)

    def __len__(self) -> int:
        return len(self._start)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A random batch: "state" (B, To, 8), "guidance" (B, To, 10), "action" (B, H, 7)[, "points" (B, To, P, 3)]."""
        return self.windows(torch.randint(len(self), (batch_size,), device=self.device))

    def windows(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The windows with indices `w` (B,), numbered as `DemoDataset` numbers them."""
        start, last = self._start[w, None], self._length[w, None] - 1
        obs_rows = torch.clamp(start + self._obs_range, min=0).minimum(last) + self._step_offset[w, None]  # (B, To)
        act_rows = torch.clamp(start + self._act_range, min=-1).minimum(last + 1) + 1 + self._action_offset[w, None]
        batch = {"state": self._state[obs_rows], "guidance": self._guidance[obs_rows], "action": self._action[act_rows]}
        if self.use_point_cloud:
            batch["points"] = self._sample_points(obs_rows)
        return batch

    def _sample_points(self, obs_rows: torch.Tensor) -> torch.Tensor:
        """(B, To) flat step rows → (B, To, P, 3) points relative to each step's ee position."""
        n_cloud, n_points = self._points.shape[1], self.config.n_points
        clouds = self._points[obs_rows]  # (B, To, N, 3)
        if n_cloud > n_points:  # a random subset, as DemoDataset and the runtime draw it
            pick = torch.rand(clouds.shape[:3], device=self.device).argsort(dim=-1)[..., :n_points]  # (B, To, P)
            clouds = torch.gather(clouds, 2, pick[..., None].expand(-1, -1, -1, 3))
        elif n_cloud < n_points:  # too few: repeat points at random
            pick = torch.randint(n_cloud, (*clouds.shape[:2], n_points), device=self.device)
            clouds = torch.gather(clouds, 2, pick[..., None].expand(-1, -1, -1, 3))
        return clouds - self._ee_xyz[obs_rows][:, :, None, :]
