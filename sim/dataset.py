"""The demo dataset: what `groundloop sim demos` writes and the action expert's training reads.

Contract (format_version 1) — a directory `<out>/` holding:

`meta.json`
    task, control_mode ("pd_ee_delta_pose"), action_names, camera {name, width, height, fov, eye,
    target} (eye/target in the world/table frame), n_points (1024), fps (20), format_version, and
    `episodes`: one entry per attempted seed, sorted by seed:
    {seed, status, success, length, file}. status is "success", "task_failed", "timeout" or
    "plan_failed"; plan failures have no file (file null, length = steps executed before planning
    failed) and are never retried. Train on entries with success true.

`episode_<seed:06d>.npz` (uncompressed, loads with allow_pickle=False), T = number of control steps:
    cloud_xyz        (T, N, 3) float32  camera frame, OpenCV axes (x right, y down, z forward), metres.
                                        Pixels of table, ground, robot base (panda_link0) and flat goal
                                        markers are removed by segmentation id; the arm, gripper and
                                        objects stay. Farthest-point sampled to N with open3d's legacy
                                        `farthest_point_down_sample` (start index 0), padded by repetition.
    cloud_rgb        (T, N, 3) uint8
    cloud_is_target  (T, N) bool        points on the task's target object (the cube; StackCube: cubeA)
    T_base_camera    (4, 4) float32     fixed camera pose in the robot base frame (camera -> base)
    qpos             (T, 9) float32     7 arm joints + 2 finger joints
    ee_pose          (T, 7) float32     TCP pose, base frame, xyz + quaternion wxyz; the sign of every
                                        base-frame quaternion is chosen with q · (0, 1, 0, 0) >= 0 (the
                                        TCP pointing down), since a top-down TCP has w ~ 0
    gripper          (T,) float32       opening in [0, 1] (0 closed)
    action           (T, 7) float32     the pd_ee_delta_pose action executed after observation t,
                                        normalised to [-1, 1]: dx dy dz drx dry drz gripper. ManiSkill
                                        3.0.1 adds 0.1 m × a[:3] to the TCP position (base axes) and
                                        pre-multiplies the XYZ-Euler rotation (-0.1 rad) × a[3:6] onto
                                        its orientation (note the sign); gripper 1 open, -1 close
    waypoints_base   (K, 8) float32     key poses of the plan: xyz, quaternion wxyz, gripper command
                                        issued once the pose is reached (1 open, -1 close)
    waypoints_camera (K, 8) float32     the same poses in the camera frame (quaternion = q_camera_base ⊗
                                        q_base, so its sign is as consistent as the base frame's)
    waypoint_names   (K,) str           e.g. pre_grasp, grasp, lift, goal (PickCube);
                                        pre_push, push_start, push_end (PushCube);
                                        pre_grasp, grasp, lift, place (StackCube)
    waypoint_step    (K,) int32         step t at which the TCP reached the waypoint (0 <= t < T)
    goal_pos         (3,) float32       base frame: PickCube goal site; PushCube ring centre at cube
                                        height; StackCube where cubeA's centre must end
    success          () bool
    seed             () int64

Observation t is the state before action t; the state after the last action is not stored.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from robot.interface import RobotObservation
from sim.demos import PLAN_FAILED, PLAN_OK, TASK_FAILED, ExpertResult, MotionPlanningExpert
from sim.maniskill_robot import ACTION_NAMES, CONTROL_MODE, CameraSpec, ManiSkillRobot
from sim.pointcloud import invert_transform, segmented_cloud, transform_pose
from sim.tasks import BACKGROUND_NAMES

FORMAT_VERSION = 1
META_FILE = "meta.json"
DEFAULT_N_POINTS = 1024
MAX_DEMO_STEPS = 300  # far above the ~90 steps a demo takes; only a runaway episode hits it

#: key -> (dtype, shape with "T", "N", "K" for the per-episode sizes)
EPISODE_SCHEMA: dict[str, tuple[str, tuple[Any, ...]]] = {
    "cloud_xyz": ("float32", ("T", "N", 3)),
    "cloud_rgb": ("uint8", ("T", "N", 3)),
    "cloud_is_target": ("bool", ("T", "N")),
    "T_base_camera": ("float32", (4, 4)),
    "qpos": ("float32", ("T", 9)),
    "ee_pose": ("float32", ("T", 7)),
    "gripper": ("float32", ("T",)),
    "action": ("float32", ("T", 7)),
    "waypoints_base": ("float32", ("K", 8)),
    "waypoints_camera": ("float32", ("K", 8)),
    "waypoint_names": ("U", ("K",)),
    "waypoint_step": ("int32", ("K",)),
    "goal_pos": ("float32", (3,)),
    "success": ("bool", ()),
    "seed": ("int64", ()),
}


#: the keys recorded once per control step
STEP_KEYS = ("cloud_xyz", "cloud_rgb", "cloud_is_target", "qpos", "ee_pose", "gripper", "action")


def episode_path(out: Path, seed: int) -> Path:
    """Where the episode of `seed` lives."""
    return Path(out) / f"episode_{seed:06d}.npz"


class EpisodeRecorder:
    """Collects the per-step arrays of one episode from (observation, action) pairs."""

    def __init__(self, robot: ManiSkillRobot, n_points: int = DEFAULT_N_POINTS) -> None:
        if robot.camera is None:
            raise ValueError("EpisodeRecorder needs a ManiSkillRobot with a camera (camera=None given)")
        self.camera_name = robot.camera.name
        self.n_points = n_points
        self.keep_ids = np.array(sorted(i for i, name in robot.segmentation_labels.items()
                                        if i != 0 and name not in BACKGROUND_NAMES), dtype=np.int32)
        self.target_ids = robot.segmentation_ids([robot.spec.target_actor])
        self.steps: dict[str, list[np.ndarray]] = {key: [] for key in STEP_KEYS}
        self.first: RobotObservation | None = None

    def __call__(self, obs: RobotObservation, action: np.ndarray) -> None:
        cam = obs.cameras[self.camera_name]
        cloud = segmented_cloud(cam.depth, cam.intrinsics, cam.segmentation, self.keep_ids, self.n_points,
                                rgb=cam.rgb, target_ids=self.target_ids)
        if self.first is None:
            self.first = obs
        step = dict(cloud_xyz=cloud["xyz"], cloud_rgb=cloud["rgb"], cloud_is_target=cloud["is_target"],
                    qpos=obs.qpos, ee_pose=obs.ee_pose, gripper=np.float32(obs.gripper), action=action)
        for key in STEP_KEYS:
            self.steps[key].append(step[key])

    def arrays(self, result: ExpertResult) -> dict[str, np.ndarray]:
        """The episode's arrays in the dataset contract."""
        if self.first is None:
            raise ValueError(f"seed {result.seed}: no steps were recorded")
        cam = self.first.cameras[self.camera_name]
        T_camera_base = invert_transform(cam.T_base_camera)
        # reshape: an episode that timed out before its first key pose has K = 0
        wp_base = np.array([np.concatenate([w.pose_base, [w.gripper]]) for w in result.waypoints]).reshape(-1, 8)
        wp_cam = np.array([np.concatenate([transform_pose(T_camera_base, w.pose_base), [w.gripper]])
                           for w in result.waypoints]).reshape(-1, 8)
        out = {key: np.stack(values) for key, values in self.steps.items()}
        out.update(
            T_base_camera=cam.T_base_camera,
            waypoints_base=wp_base,
            waypoints_camera=wp_cam,
            waypoint_names=np.array([w.name for w in result.waypoints], dtype=str),
            waypoint_step=np.array([w.step for w in result.waypoints]),
            goal_pos=self.first.extras["goal_pos"],
            success=np.bool_(result.success),
            seed=np.int64(result.seed),
        )
        return {key: np.asarray(out[key]).astype(dtype if dtype != "U" else str)
                for key, (dtype, _) in EPISODE_SCHEMA.items()}


def validate_episode(arrays: dict[str, np.ndarray], where: str = "episode") -> None:
    """Raise ValueError naming the key if `arrays` breaks the contract (dtypes, shapes, step indices)."""
    sizes: dict[str, int] = {}
    for key, (dtype, shape) in EPISODE_SCHEMA.items():
        if key not in arrays:
            raise ValueError(f"{where}: missing key {key!r}")
        a = arrays[key]
        if (a.dtype.kind != "U") if dtype == "U" else (a.dtype != np.dtype(dtype)):
            raise ValueError(f"{where}: {key} has dtype {a.dtype}, expected {dtype}")
        if a.ndim != len(shape):
            raise ValueError(f"{where}: {key} has shape {a.shape}, expected {shape}")
        for dim, expected in zip(a.shape, shape):
            if isinstance(expected, str):
                expected = sizes.setdefault(expected, dim)
            if dim != expected:
                raise ValueError(f"{where}: {key} has shape {a.shape}, expected {shape} with {sizes}")
    steps = arrays["waypoint_step"]
    if len(steps) and (steps.min() < 0 or steps.max() >= sizes["T"]):
        raise ValueError(f"{where}: waypoint_step {steps} outside [0, {sizes['T']})")


def write_episode(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temp file + os.replace): a killed run never leaves a half-written episode."""
    validate_episode(arrays, str(path))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_episode(path: Path) -> dict[str, np.ndarray]:
    """All arrays of one episode file, validated against the contract."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    validate_episode(arrays, str(path))
    return arrays


def load_meta(out: Path) -> dict[str, Any]:
    """The dataset's meta.json."""
    path = Path(out) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {META_FILE} in {out}; generate demos with `groundloop sim demos --out {out}`")
    return json.loads(path.read_text())


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    meta["episodes"] = sorted(meta["episodes"], key=lambda e: e["seed"])
    meta["n_episodes"] = len(meta["episodes"])
    meta["n_success"] = sum(e["success"] for e in meta["episodes"])
    tmp = Path(out) / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, Path(out) / META_FILE)


def _episode_entry(seed: int, status: str, success: bool, length: int, file: str | None) -> dict[str, Any]:
    return {"seed": seed, "status": status, "success": bool(success), "length": int(length), "file": file}


def _known_episodes(out: Path, meta: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Seeds already done: meta entries whose file (if any) exists, plus episode files meta missed
    (a run killed between writing an episode and updating meta)."""
    known = {e["seed"]: e for e in meta["episodes"] if e["file"] is None or (out / e["file"]).is_file()}
    for path in sorted(out.glob("episode_*.npz")):
        seed = int(path.stem.split("_")[1])
        if seed not in known:
            arrays = load_episode(path)
            ok = bool(arrays["success"])
            known[seed] = _episode_entry(seed, PLAN_OK if ok else TASK_FAILED, ok, len(arrays["action"]), path.name)
    return known


def generate_demos(
    task: str,
    n: int,
    out: Path,
    *,
    seed_start: int = 0,
    n_points: int = DEFAULT_N_POINTS,
    camera: CameraSpec = CameraSpec(),
    progress: bool = True,
) -> dict[str, Any]:
    """Run the motion-planning expert on seeds [seed_start, seed_start + n) and write the dataset.

    Resumable: seeds with a complete episode file or a recorded failure are skipped. Returns meta.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    robot = ManiSkillRobot(task, max_episode_steps=MAX_DEMO_STEPS, camera=camera)
    meta_path = out / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"episodes": []}
    if meta.get("task", task) != task:
        raise ValueError(f"{out} holds {meta['task']} demos, not {task}; choose another --out")
    robot.connect()
    try:
        meta.update(task=task, control_mode=CONTROL_MODE, action_names=list(ACTION_NAMES),
                    camera=camera.to_dict(), n_points=n_points,
                    fps=int(round(1.0 / robot.env.control_timestep)), format_version=FORMAT_VERSION)
        known = _known_episodes(out, meta)
        meta["episodes"] = list(known.values())
        expert = MotionPlanningExpert(robot)
        seeds = [s for s in range(seed_start, seed_start + n) if s not in known]
        bar = tqdm(seeds, desc=f"{task} demos", unit="ep", disable=not progress)
        for seed in bar:
            recorder = EpisodeRecorder(robot, n_points)
            result = expert.run(seed, on_step=recorder)
            file = None
            if result.status != PLAN_FAILED:
                path = episode_path(out, seed)
                write_episode(path, recorder.arrays(result))
                file = path.name
            meta["episodes"].append(_episode_entry(seed, result.status, result.success, result.n_steps, file))
            _write_meta(out, meta)
            bar.set_postfix(success=sum(e["success"] for e in meta["episodes"]))
        _write_meta(out, meta)
    finally:
        robot.disconnect()
    return meta
