"""Run a trained action expert on live data: raw robot observations in, an action chunk out.

This is what the `ActionExpert` node wraps. It keeps the rolling buffer of n_obs_steps observations,
follows the planner's waypoints with the same `GuidanceTracker` that labelled the training demos,
expresses the cloud and the guidance relative to the current ee pose exactly as the dataset did, and
rejects non-finite inputs by name instead of turning them into motion.

`python -m nodes.action_expert.policy_runtime --checkpoint PATH` measures the latency of one call
(observation in → 16-step chunk sampled with 10 DDIM steps → executed part out).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodes.action_expert.checkpoint import load_policy_checkpoint
from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.dataset import build_state, cloud_camera_to_base
from nodes.action_expert.guidance import GuidanceTracker, waypoints_camera_to_base
from nodes.action_expert.model import ActionExpertPolicy


class NoWaypointsError(RuntimeError):
    """A guided expert was asked to act before the planner sent any waypoints."""


def _checked(name: str, value: np.ndarray | float, shape: tuple[int | None, ...]) -> np.ndarray:
    """As float64, with the expected shape (None = any size) and only finite values, else a ValueError naming the field."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf values")
    return array


class ActionExpertRuntime:
    """A loaded policy plus the per-episode state it needs (observation buffer, waypoint progress)."""

    def __init__(self, policy: ActionExpertPolicy, *, seed: int = 0) -> None:
        self.policy = policy.eval()
        self.config: ActionExpertConfig = policy.config
        self.device = next(policy.parameters()).device
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget the episode: observations, waypoints and progress; sampling restarts from the seed."""
        self._buffer: deque[dict[str, np.ndarray]] = deque(maxlen=self.config.n_obs_steps)
        self._tracker: GuidanceTracker | None = None
        self._pending_waypoints: np.ndarray | None = None
        self._rng = np.random.default_rng(self._seed)
        self._generator = torch.Generator(device=self.device).manual_seed(self._seed)

    @property
    def target_index(self) -> int | None:
        """Index of the waypoint the expert is heading for (None before the first plan is used)."""
        return None if self._tracker is None else self._tracker.target_index

    def set_waypoints(self, waypoints_camera: np.ndarray, T_base_camera: np.ndarray) -> None:
        """Take a plan: (K, 8) xyz + quat wxyz + gripper cmd in the camera frame; used from the next `act`.

        A re-sent plan with as many waypoints keeps the progress made along the previous one.
        """
        waypoints = _checked("waypoints_camera", waypoints_camera, (None, 8))
        if len(waypoints) == 0:
            raise ValueError("waypoints_camera is empty")
        T = _checked("T_base_camera", T_base_camera, (4, 4))
        self._pending_waypoints = waypoints_camera_to_base(waypoints, T)

    def observe(
        self,
        *,
        ee_pose: np.ndarray,
        gripper: float,
        cloud_xyz: np.ndarray | None = None,
        T_base_camera: np.ndarray | None = None,
    ) -> None:
        """Record one step's observation (and the waypoint progress it makes) without sampling.

        ee_pose: (7,) base frame xyz + quat wxyz; gripper: opening in [0, 1]; cloud_xyz: (N, 3) camera
        frame with T_base_camera (4, 4) camera → base, required when the expert uses point clouds.
        """
        cfg = self.config
        ee = _checked("ee_pose", ee_pose, (7,))
        grip = _checked("gripper", gripper, ())
        step = {"state": build_state(ee, grip), "guidance": self._guidance(ee)}
        if cfg.use_point_cloud:
            if cloud_xyz is None or T_base_camera is None:
                raise ValueError("this expert needs cloud_xyz and T_base_camera")
            step["points"] = self._points(_checked("cloud_xyz", cloud_xyz, (None, 3)),
                                          _checked("T_base_camera", T_base_camera, (4, 4)), ee)
        if not self._buffer:
            self._buffer.extend([step] * cfg.n_obs_steps)  # first call: repeat, as the dataset pads episode starts
        else:
            self._buffer.append(step)

    def predict(self) -> np.ndarray:
        """(n_action_steps, 7) pd_ee_delta_pose actions (float32, action units) from the recorded observations."""
        if not self._buffer:
            raise ValueError("predict() before any observe()")
        obs = {
            key: torch.from_numpy(np.stack([s[key] for s in self._buffer])[None]).to(self.device)  # (1, To, ...)
            for key in self._buffer[-1]
        }
        actions = self.policy.predict_action(obs, generator=self._generator)  # (1, Na, 7)
        return actions[0].cpu().numpy().astype(np.float32)

    def act(self, **observation: Any) -> np.ndarray:
        """`observe` one step, then `predict`: one observation in → one action chunk out."""
        self.observe(**observation)
        return self.predict()

    def _guidance(self, ee_pose: np.ndarray) -> np.ndarray:
        cfg = self.config
        if not cfg.use_guidance:
            return np.zeros(cfg.guidance_dim, dtype=np.float32)  # the baseline ignores it; keep shapes
        if self._pending_waypoints is not None:
            if self._tracker is None:
                self._tracker = GuidanceTracker(
                    self._pending_waypoints,
                    ee_pose,
                    lookahead_m=cfg.lookahead_m,
                    reach_tolerance_m=cfg.reach_tolerance_m,
                    resolution_m=cfg.path_resolution_m,
                    spline_degree=cfg.spline_degree,
                )
            else:
                self._tracker.replace_waypoints(self._pending_waypoints, ee_pose)
            self._pending_waypoints = None
        if self._tracker is None:
            raise NoWaypointsError("the action expert has no waypoints yet: call set_waypoints() with the planner's plan first")
        return self._tracker.update(ee_pose)

    def _points(self, cloud_xyz: np.ndarray, T_base_camera: np.ndarray, ee_pose: np.ndarray) -> np.ndarray:
        """(N, 3) camera-frame cloud → (P, 3) base-axis offsets from the ee position, P = n_points."""
        n_cloud, n_points = len(cloud_xyz), self.config.n_points
        if n_cloud == 0:
            raise ValueError("cloud_xyz has no points")
        pick = self._rng.choice(n_cloud, size=n_points, replace=n_cloud < n_points)
        points_base = cloud_camera_to_base(cloud_xyz[pick], T_base_camera)  # (P, 3)
        return (points_base - ee_pose[:3].astype(np.float32)).astype(np.float32)


def load_policy(path: str | Path, *, device: str = "auto", seed: int = 0, threads: int | None = None) -> ActionExpertRuntime:
    """Load a checkpoint written by `groundloop train action-expert`; a missing file names that command.

    `threads` sets torch's CPU threads for the whole process: 1 when the simulator or other nodes share
    a two-core machine (two OpenMP threads that must wait for a busy core make p95 several times worse).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    policy, _meta = load_policy_checkpoint(Path(path), device=device)
    return ActionExpertRuntime(policy, seed=seed)


def measure_latency(runtime: ActionExpertRuntime, *, runs: int, warmup: int = 10, seed: int = 0) -> dict[str, float]:
    """p50/p95/max of `act()` on synthetic but well-formed inputs (a 1024-point cloud, a 4-waypoint plan)."""
    rng = np.random.default_rng(seed)
    T_base_camera = np.eye(4)
    T_base_camera[:3, 3] = [0.3, 0.0, 0.6]
    ee = np.array([0.0, 0.0, 0.3, 0.0, 1.0, 0.0, 0.0])
    waypoints = np.tile(np.array([[0.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0]]), (4, 1))
    waypoints[:, :3] += rng.normal(scale=0.1, size=(4, 3))
    runtime.reset()
    runtime.set_waypoints(waypoints, T_base_camera)
    times = []
    for i in range(warmup + runs):
        cloud = rng.normal(scale=0.2, size=(1024, 3)) + np.array([0.0, 0.0, 0.6])
        start = time.perf_counter()
        runtime.act(ee_pose=ee, gripper=1.0, cloud_xyz=cloud, T_base_camera=T_base_camera)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    t = np.asarray(times)
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)), "max_ms": float(t.max()), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="latency of one action-expert call (obs in → chunk out)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    runtime = load_policy(args.checkpoint, device=args.device, threads=args.threads)
    print(json.dumps({"threads": args.threads, "device": str(runtime.device), **measure_latency(runtime, runs=args.runs)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
