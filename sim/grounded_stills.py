"""Camera stills of GroundedPickCube-v1 with the simulator's per-cube label maps: data for a learned grounder.

Each seed resets the task the way groundloop's RobotNode runs it (`ManiSkillRobot` with the default 256×256
`CameraSpec`) and keeps the frame at reset, then `moved_per_seed` more frames, each after `steps_between`
ee-delta actions that carry the open or closed gripper toward a random point over the workspace or over a
drawn cube (with noise), so the arm crosses the scene and hides cubes. A still is the RGB frame cropped to
`WORKSPACE_CROP` (a square that holds every cube at reset and the target at its goal) and resized to
`size`×`size` (area averaging), and a label map of the same crop resized with nearest neighbour: pixel value
1 + the index of the cube's colour in `list(PALETTE)`, 0 elsewhere, from the segmentation ids. Splits are by
seed with the shapes-world rule (every fifth seed is held out), so a held-out scene is never a training
scene.

On disk: `DIR/stills.npz` (images (N, S, S, 3) uint8, labels (N, S, S) uint8, seeds (N,) int64,
steps (N,) int64 sim steps since reset, present (N, len(PALETTE)) bool: the colours drawn in the scene,
target (N,) int64: the instructed colour's palette index) and `DIR/index.json` (format, palette order,
crop box, size, split, seeds, command). Both are renamed into place whole.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sim.shapes_world.dataset import ALL, seeds_for

if TYPE_CHECKING:
    from sim.maniskill_robot import ManiSkillRobot

FORMAT = "groundloop.grounded_stills/1"
STILLS_NAME = "stills.npz"
INDEX_NAME = "index.json"
DEFAULT_SIZE = 128
DEFAULT_MOVED_PER_SEED = 2
DEFAULT_STEPS_BETWEEN = 4
ARRAYS = ("images", "labels", "seeds", "steps", "present", "target")
#: the random reach's targets: over the cube spawn square widened by this much, at these heights (world z, m)
REACH_WIDEN_M = 0.05
REACH_HEIGHT_M = (0.06, 0.25)
#: how often a reach aims over a drawn cube (xy spread by REACH_CUBE_SPREAD_M) rather than anywhere
REACH_TO_CUBE = 0.6
REACH_CUBE_SPREAD_M = 0.03
#: std of the noise added to the normalised reach action's translation
REACH_NOISE = 0.3
MOTION_STREAM = 17  # the arm motion's random stream, apart from the task's own


def palette() -> list[str]:
    """Colour names in label order: label value k + 1 is `palette()[k]`."""
    from sim.grounded_pick import PALETTE

    return list(PALETTE)


# ---- labels, crops ----------------------------------------------------------------------------------


def label_lut(segmentation_labels: dict[int, str]) -> np.ndarray:
    """Segmentation id -> label value (1 + palette index of a cube's colour, 0 for everything else)."""
    from sim.grounded_pick import colour_of_actor

    names = palette()
    lut = np.zeros(max(segmentation_labels, default=0) + 1, dtype=np.uint8)
    for seg_id, name in segmentation_labels.items():
        colour = colour_of_actor(name)
        if colour is not None:
            lut[seg_id] = 1 + names.index(colour)
    return lut


def label_map(segmentation: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(H, W) uint8 label map of an (H, W) segmentation-id image."""
    seg = np.asarray(segmentation)
    known = (seg >= 0) & (seg < len(lut))
    return np.where(known, lut[np.clip(seg, 0, len(lut) - 1)], 0).astype(np.uint8)


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int, *, nearest: bool) -> np.ndarray:
    """`image[y0:y1, x0:x1]` resized to size×size: area averaging for RGB, nearest neighbour for labels."""
    x0, y0, x1, y1 = box
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    if crop.shape[:2] == (size, size):
        return crop
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
    return np.asarray(Image.fromarray(crop).resize((size, size), resample=resample))


def check_box(box: tuple[int, int, int, int], width: int, height: int) -> None:
    """A crop box must be square, non-empty and inside the frame."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 == y1 - y0):
        raise ValueError(f"crop box {box} is not a non-empty square inside the {width}×{height} frame")


# ---- measuring the workspace crop ---------------------------------------------------------------------


def project(points_base: np.ndarray, intrinsics: np.ndarray, T_base_camera: np.ndarray) -> np.ndarray:
    """Pixel (u, v) = (column, row) of base-frame points (..., 3) in an OpenCV camera."""
    pts = np.asarray(points_base, dtype=np.float64)
    T_camera_base = np.linalg.inv(T_base_camera)
    cam = pts @ T_camera_base[:3, :3].T + T_camera_base[:3, 3]
    uvw = cam @ np.asarray(intrinsics, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def square_box(box: tuple[int, int, int, int], margin: int, width: int, height: int) -> tuple[int, int, int, int]:
    """`box` grown by `margin`, clamped to the frame, then made square by growing its shorter side about
    its centre (shifted back inside the frame where it would stick out; the whole frame's shorter side at most)."""
    x0, y0, x1, y1 = max(0, box[0] - margin), max(0, box[1] - margin), min(width, box[2] + margin), min(height, box[3] + margin)
    side = min(max(x1 - x0, y1 - y0), width, height)

    def fit(lo: int, hi: int, limit: int) -> tuple[int, int]:
        start = (lo + hi - side) // 2  # centred; rounds towards the lower edge
        start = min(max(start, 0), limit - side)
        return start, start + side

    (x0, x1), (y0, y1) = fit(x0, x1, width), fit(y0, y1, height)
    return x0, y0, x1, y1


def measure_workspace_crop(robot: ManiSkillRobot, seeds: Iterable[int], margin: int = 8) -> dict[str, Any]:
    """The square crop that holds every drawn cube's pixels at reset and the target cube at its goal, over
    `seeds`: the union of the cubes' segmentation boxes and of the projected corners of a box around each
    goal (half-extent: the cube's bounding-sphere radius, so any orientation fits), grown by `margin`,
    clamped to the frame and made square. Returns the box and the raw extents it came from."""
    from sim.grounded_pick import CUBE_NAME_PREFIX

    name = robot.camera.name
    cube_ids = robot.segmentation_ids([n for n in robot.segmentation_labels.values() if n.startswith(CUBE_NAME_PREFIX)])
    cubes: tuple[int, int, int, int] | None = None
    goals: tuple[int, int, int, int] | None = None
    seeds = list(seeds)
    for seed in seeds:
        obs = robot.reset(seed=seed)
        cam = obs.cameras[name]
        cubes = _union(cubes, _box_of(np.isin(cam.segmentation, cube_ids)))
        r = float(robot.env.cube_half_size) * np.sqrt(3.0)
        corners = obs.extras["goal_pos"] + r * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        uv = project(corners, cam.intrinsics, cam.T_base_camera)
        goal_box = (int(np.floor(uv[:, 0].min())), int(np.floor(uv[:, 1].min())),
                    int(np.ceil(uv[:, 0].max())) + 1, int(np.ceil(uv[:, 1].max())) + 1)
        goals = _union(goals, goal_box)
    assert cubes is not None and goals is not None, "no seeds measured"
    both = _union(cubes, goals)
    assert both is not None
    return {"box": square_box(both, margin, robot.camera.width, robot.camera.height), "cubes": cubes, "goals": goals,
            "union": both, "margin": margin, "seeds": [seeds[0], seeds[-1]], "n_seeds": len(seeds)}


# ---- stills ---------------------------------------------------------------------------------------


def _reach_action(robot: ManiSkillRobot, target_base: np.ndarray, gripper: float, rng: np.random.Generator) -> np.ndarray:
    pose = robot.ee_pose().copy()
    pose[:3] = target_base
    action = robot.action_toward(pose, gripper)
    action[:3] = np.clip(action[:3] + rng.normal(0.0, REACH_NOISE, size=3), -1.0, 1.0)
    return action


def _reach_target(robot: ManiSkillRobot, rng: np.random.Generator) -> np.ndarray:
    """A base-frame point to reach for: over a random drawn cube (REACH_TO_CUBE of the time, so that the
    arm hides cubes) or anywhere over the widened spawn square, at a random height."""
    env = robot.env
    if rng.random() < REACH_TO_CUBE:
        colour = env.scene_colours[int(rng.integers(len(env.scene_colours)))]
        xy = env.cubes[colour].pose.p[0].cpu().numpy()[:2].astype(np.float64) + rng.normal(0.0, REACH_CUBE_SPREAD_M, size=2)
    else:
        half = float(env.cube_spawn_half_size) + REACH_WIDEN_M
        xy = np.asarray(env.cube_spawn_center, dtype=np.float64) + rng.uniform(-half, half, size=2)
    return robot.to_base(np.array([xy[0], xy[1], rng.uniform(*REACH_HEIGHT_M)]))


def stills_of_seed(robot: ManiSkillRobot, seed: int, *, box: tuple[int, int, int, int], size: int,
                   moved_per_seed: int, steps_between: int, lut: np.ndarray) -> list[dict[str, Any]]:
    """The stills of one seed: the frame at reset, then `moved_per_seed` frames after random reaches."""
    names = palette()
    cam_name = robot.camera.name
    obs = robot.reset(seed=seed)
    env = robot.env
    present = np.isin(names, env.scene_colours)
    target = names.index(env.target_colour)
    rng = np.random.default_rng([seed, MOTION_STREAM])
    stills, step = [], 0
    for k in range(moved_per_seed + 1):
        if k:
            goal, gripper = _reach_target(robot, rng), float(rng.choice([-1.0, 1.0]))
            for _ in range(steps_between):
                robot.send_action(_reach_action(robot, goal, gripper, rng))
                step += 1
            obs = robot.get_observation()
        cam = obs.cameras[cam_name]
        stills.append({"image": crop_resize(cam.rgb, box, size, nearest=False),
                       "label": crop_resize(label_map(cam.segmentation, lut), box, size, nearest=True),
                       "seed": seed, "step": step, "present": present, "target": target})
    return stills


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def write_grounded_stills(out: str | Path, n: int, *, seed_start: int = 0, split: str = ALL, crop: bool = True,
                          size: int = DEFAULT_SIZE, moved_per_seed: int = DEFAULT_MOVED_PER_SEED,
                          steps_between: int = DEFAULT_STEPS_BETWEEN, command: str | None = None,
                          robot: ManiSkillRobot | None = None,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Stills of the first `n` seeds of `split` from `seed_start` on, `1 + moved_per_seed` per seed, into
    `out/stills.npz` and `out/index.json`. `robot` (connected, GroundedPickCube-v1, default camera) is
    reused when given, else built and closed here. `progress(done, n)` is called after each seed. The index."""
    from sim.grounded_pick import WORKSPACE_CROP
    from sim.maniskill_robot import CameraSpec, ManiSkillRobot
    from sim.tasks import GROUNDED_PICK_CUBE

    if n < 1 or size < 1 or moved_per_seed < 0 or steps_between < 1:
        raise ValueError(f"grounded stills: need n >= 1, size >= 1, moved_per_seed >= 0 and steps_between >= 1, "
                         f"got n={n} size={size} moved_per_seed={moved_per_seed} steps_between={steps_between}")
    seeds = seeds_for(split, n, seed_start)
    own = robot is None
    robot = robot or ManiSkillRobot(GROUNDED_PICK_CUBE)
    if robot.spec.name != GROUNDED_PICK_CUBE or robot.camera is None:
        raise ValueError(f"grounded stills need a {GROUNDED_PICK_CUBE} robot with a camera, got {robot.spec.name} "
                         f"with camera {robot.camera}")
    if crop and robot.camera != CameraSpec():
        raise ValueError(f"WORKSPACE_CROP {WORKSPACE_CROP} is measured for the default CameraSpec; this robot has "
                         f"{robot.camera} (use crop=False)")
    box = WORKSPACE_CROP if crop else (0, 0, robot.camera.width, robot.camera.height)
    check_box(box, robot.camera.width, robot.camera.height)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stills: list[dict[str, Any]] = []
    start = time.monotonic()
    robot.connect()
    try:
        lut = label_lut(robot.segmentation_labels)
        for i, seed in enumerate(seeds):
            stills += stills_of_seed(robot, seed, box=box, size=size, moved_per_seed=moved_per_seed,
                                     steps_between=steps_between, lut=lut)
            if progress is not None:
                progress(i + 1, len(seeds))
    finally:
        if own:
            robot.disconnect()
    arrays = {"images": np.stack([s["image"] for s in stills]).astype(np.uint8),
              "labels": np.stack([s["label"] for s in stills]).astype(np.uint8),
              "seeds": np.array([s["seed"] for s in stills], dtype=np.int64),
              "steps": np.array([s["step"] for s in stills], dtype=np.int64),
              "present": np.stack([s["present"] for s in stills]).astype(bool),
              "target": np.array([s["target"] for s in stills], dtype=np.int64)}

    def save(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    _write_atomic(out / STILLS_NAME, save)
    index = {"format": FORMAT, "task": GROUNDED_PICK_CUBE, "palette": palette(), "crop": list(box), "cropped": crop,
             "camera": robot.camera.to_dict(), "size": size, "split": split, "n": n, "seed_start": seed_start,
             "seeds": seeds, "moved_per_seed": moved_per_seed, "steps_between": steps_between,
             "n_stills": len(stills), "file": STILLS_NAME, "seconds": round(time.monotonic() - start, 1),
             "command": command}
    _write_atomic(out / INDEX_NAME, lambda path: path.write_text(json.dumps(index, indent=1)))
    return index


# ---- loading ---------------------------------------------------------------------------------------


@dataclass
class GroundedStills:
    """A grounded-stills set in memory; label value k + 1 is the cube of colour `palette[k]`."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N, S, S) uint8
    seeds: np.ndarray  # (N,) int64
    steps: np.ndarray  # (N,) int64, sim steps since reset (0: the frame at reset)
    present: np.ndarray  # (N, len(palette)) bool
    target: np.ndarray  # (N,) int64 palette index
    palette: list[str]
    crop: tuple[int, int, int, int]
    size: int
    index: dict[str, Any]

    def __len__(self) -> int:
        return len(self.seeds)


def load_grounded_stills(path: str | Path) -> GroundedStills:
    """Load `path` (the directory, its index.json or its stills.npz); a missing file or another format is
    an error that names the file and the command that makes the set."""
    path = Path(path)
    directory = path if path.suffix not in (".json", ".npz") else path.parent
    index_path, stills_path = directory / INDEX_NAME, directory / STILLS_NAME
    make = "make it with `groundloop sim grounded-stills --out DIR`"
    for p in (index_path, stills_path):
        if not p.is_file():
            raise FileNotFoundError(f"grounded stills: {p} is missing; {make}")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"grounded stills: {index_path} is not JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"grounded stills: {index_path} has format {found!r}, expected {FORMAT!r}; {make}")
    try:
        with np.load(stills_path) as data:
            missing = [k for k in ARRAYS if k not in data.files]
            if missing:
                raise ValueError(f"grounded stills: {stills_path} lacks the arrays {missing} of {FORMAT}; {make}")
            arrays = {k: data[k] for k in ARRAYS}
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("grounded stills:"):
            raise
        raise ValueError(f"grounded stills: {stills_path} is not a readable npz ({exc}); {make}") from exc
    n = len(arrays["seeds"])
    shapes_ok = (arrays["images"].ndim == 4 and arrays["labels"].shape == arrays["images"].shape[:3]
                 and all(len(arrays[k]) == n for k in ARRAYS)
                 and arrays["present"].shape[1:] == (len(index["palette"]),))
    if not shapes_ok:
        raise ValueError(f"grounded stills: {stills_path} has inconsistent array shapes "
                         f"{ {k: v.shape for k, v in arrays.items()} }")
    return GroundedStills(**arrays, palette=list(index["palette"]), crop=tuple(index["crop"]),
                          size=int(index["size"]), index=index)
