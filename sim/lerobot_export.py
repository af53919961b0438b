"""Demo episodes → a LeRobotDataset v3.0 directory, so LeRobot tools and policies can read our demos.

`groundloop sim export-lerobot --data data/demos/PickCube-v1 --out data/lerobot/pickcube` writes the
successful episodes of a demo directory (the npz contract of `sim.dataset`) as:

    meta/info.json                     codebase_version "v3.0", fps, features, path templates
    meta/stats.json                    min / max / mean / std / count per feature, over every frame
    meta/tasks.parquet                 task text (the pandas index LeRobot reads) → task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: offsets, length, tasks, stats/...
    data/chunk-{c:03d}/file-{f:03d}.parquet    one row per frame, many episodes per file (≤ 100 MB)
    videos/observation.images.<camera>/chunk-{c:03d}/file-{f:03d}.mp4   only when episodes hold RGB

Per-frame features:
    observation.state (8,) float32                  TCP pose in the base frame (xyz, quaternion wxyz) +
                                                    gripper opening: the expert's state, bit-exact
    observation.qpos (9,) float32                   7 arm joints + 2 fingers
    action (7,) float32                             pd_ee_delta_pose, normalised (see sim.dataset)
    observation.pointcloud (3N,) float32            `cloud_xyz` (camera frame, OpenCV axes, metres),
                                                    point-major: x0 y0 z0 x1 ...
    observation.pointcloud_rgb (3N,) uint8          `cloud_rgb`, point-major
    observation.pointcloud_is_target (N,) bool      `cloud_is_target`
    observation.images.<camera> (H, W, 3) video     only if an episode holds the optional `rgb`
                                                    (T, H, W, 3) uint8 array: the demo generator records
                                                    no camera images, and re-rendering is out of scope
    timestamp, frame_index, episode_index, index, task_index   LeRobot's bookkeeping columns

Every per-frame feature is a vector: LeRobot's stats and checkers (lerobot-doctor) treat them per
dimension, and a (N, 3) feature breaks them; the contract's shapes give the points back on import.

The per-episode constants of the contract (T_base_camera, waypoints_base, waypoints_camera,
waypoint_names, waypoint_step, goal_pos, success, seed) have no per-frame meaning and K varies by
episode, so they are columns `groundloop/<key>` of the episodes parquet, flattened (row-major) to a
list; `sim.lerobot_import` reshapes them by the contract. Everything round-trips bit-exactly except
video frames (lossy H.264).
"""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.dataset import EPISODE_SCHEMA, STEP_KEYS, load_episode, load_meta
from sim.maniskill_robot import ACTION_NAMES

CODEBASE_VERSION = "v3.0"
DEFAULT_FPS = 20
ROBOT_TYPE = "panda"
CHUNK_SIZE = 1000  # files per chunk directory (LeRobot's DEFAULT_CHUNK_SIZE)
DATA_FILE_SIZE_MB = 100  # LeRobot's DEFAULT_DATA_FILE_SIZE_IN_MB; a file never splits an episode
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EXTRA_PREFIX = "groundloop/"
RGB_KEY = "rgb"  # optional per-episode camera frames (T, H, W, 3) uint8, outside the npz contract
DEFAULT_CAMERA = "base_camera"
IMAGE_PREFIX = "observation.images."

VIDEO_CODEC = "libx264"
VIDEO_CODEC_NAME = "h264"
VIDEO_PIX_FMT = "yuv420p"
VIDEO_GOP = 2  # LeRobot's default: frequent keyframes keep random access to a frame cheap
VIDEO_OPTIONS = {"preset": "veryfast", "crf": "18"}

STATE_NAMES = ("x", "y", "z", "qw", "qx", "qy", "qz", "gripper")
QPOS_NAMES = tuple(f"panda_joint{i}" for i in range(1, 8)) + ("panda_finger_joint1", "panda_finger_joint2")
#: LeRobot key → contract key of the per-step arrays copied as they are
FRAME_ARRAYS = {
    "observation.qpos": "qpos",
    "action": "action",
    "observation.pointcloud": "cloud_xyz",
    "observation.pointcloud_rgb": "cloud_rgb",
    "observation.pointcloud_is_target": "cloud_is_target",
}
INDEX_COLUMNS = ("frame_index", "episode_index", "index", "task_index")
EPISODE_CONSTANTS = tuple(key for key in EPISODE_SCHEMA if key not in STEP_KEYS)


def frame_columns(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An episode's per-frame features (without the bookkeeping columns) as (T, *shape) arrays."""
    state = np.concatenate([arrays["ee_pose"], arrays["gripper"][:, None]], axis=1).astype(np.float32)
    flat = {key: arrays[src].reshape(len(arrays[src]), -1) for key, src in FRAME_ARRAYS.items()}
    return {"observation.state": state, **flat}


def _names(key: str) -> list[str] | None:
    return {
        "observation.state": list(STATE_NAMES),
        "observation.qpos": list(QPOS_NAMES),
        "action": list(ACTION_NAMES),
    }.get(key)


def feature_stats(values: np.ndarray, *, image: bool = False) -> dict[str, np.ndarray]:
    """LeRobot's stats: reduced over frames (and pixels, per channel in [0, 1], for images)."""
    x = values.astype(np.float64)
    axes: tuple[int, ...] = (0,)
    if image:  # (T, H, W, 3) → (3, 1, 1), as LeRobot keeps image stats channel-first
        x, axes = x.transpose(0, 3, 1, 2) / 255.0, (0, 2, 3)
    keep = image or x.ndim == 1
    stats = {"min": x.min(axes, keepdims=keep), "max": x.max(axes, keepdims=keep),
             "mean": x.mean(axes, keepdims=keep), "std": x.std(axes, keepdims=keep)}
    if image:
        stats = {k: v[0] for k, v in stats.items()}
    stats["count"] = np.array([len(values)], dtype=np.int64)
    return stats


def _arrow_column(values: np.ndarray) -> Any:
    """(R, *shape) → a pyarrow array of R rows, nested fixed-size lists for the trailing dims."""
    import pyarrow as pa

    column = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def _group_files(episodes: Sequence[dict[str, np.ndarray]]) -> list[list[int]]:
    """Episode indices per data file: consecutive episodes until a file would pass DATA_FILE_SIZE_MB."""
    groups: list[list[int]] = []
    size = 0
    for e, arrays in enumerate(episodes):
        nbytes = sum(a.nbytes for a in frame_columns(arrays).values())
        if not groups or size + nbytes > DATA_FILE_SIZE_MB * 2**20:
            groups.append([])
            size = 0
        groups[-1].append(e)
        size += nbytes
    return groups


def _encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """(T, H, W, 3) uint8 → an H.264 MP4 whose frame i has pts i at 1/fps."""
    import av

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{path}: {VIDEO_PIX_FMT} needs even image sizes, got {width}×{height}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=fps, options=VIDEO_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, VIDEO_PIX_FMT
        stream.codec_context.gop_size = VIDEO_GOP
        stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _features(first: dict[str, np.ndarray], video_key: str | None, fps: int) -> dict[str, Any]:
    features: dict[str, Any] = {}
    for key, values in frame_columns(first).items():
        features[key] = {"dtype": str(values.dtype), "shape": list(values.shape[1:]),
                         "names": _names(key)}
    if video_key is not None:
        height, width = first[RGB_KEY].shape[1:3]
        features[video_key] = {
            "dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": height, "video.width": width, "video.codec": VIDEO_CODEC_NAME,
                     "video.pix_fmt": VIDEO_PIX_FMT, "video.is_depth_map": False, "video.fps": fps,
                     "video.channels": 3, "has_audio": False},
        }
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in INDEX_COLUMNS:
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def _write_tasks(root: Path, tasks: list[str]) -> None:
    """tasks.parquet as LeRobot writes it from pandas: the task text is the (named) index, so the
    pandas metadata says so; pyarrow readers see plain `task_index` and `task` columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode",
                     "numpy_type": "object", "metadata": None}],
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks)})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), root / TASKS_PATH)


def _episode_row(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The contract's per-episode constants as flat lists (scalars stay scalars)."""
    row: dict[str, Any] = {}
    for key in EPISODE_CONSTANTS:
        value = np.asarray(arrays[key])
        row[EXTRA_PREFIX + key] = value.item() if value.ndim == 0 else value.reshape(-1).tolist()
    return row


def export_lerobot(data: Path, out: Path, *, repo_id: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the successful episodes of demo directory `data` as a LeRobot v3.0 dataset in `out`;
    returns info.json's content."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, out = Path(data), Path(out)
    meta = load_meta(data)
    files = [data / e["file"] for e in meta["episodes"] if e.get("success") and e.get("file")]
    if not files:
        raise ValueError(f"{data}: no successful episodes to export")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    episodes = [load_episode(path) for path in files]  # every array of the file, `rgb` included
    has_rgb = [RGB_KEY in arrays for arrays in episodes]
    if any(has_rgb) and not all(has_rgb):
        raise ValueError(f"{data}: some episodes hold `{RGB_KEY}` frames and some do not")
    fps = int(meta.get("fps", DEFAULT_FPS))
    camera = (meta.get("camera") or {}).get("name", DEFAULT_CAMERA)
    video_key = IMAGE_PREFIX + camera if all(has_rgb) else None
    task = meta["task"]

    rows: list[dict[str, Any]] = []
    per_feature: dict[str, list[np.ndarray]] = {}
    index = 0
    for file_number, group in enumerate(_group_files(episodes)):
        location = {"chunk_index": file_number // CHUNK_SIZE, "file_index": file_number % CHUNK_SIZE}
        columns: dict[str, list[np.ndarray]] = {}
        video_start = 0
        for e in group:
            arrays = episodes[e]
            T = len(arrays["action"])
            frame_index = np.arange(T, dtype=np.int64)
            cols = {**frame_columns(arrays), "timestamp": (frame_index / fps).astype(np.float32),
                    "frame_index": frame_index, "episode_index": np.full(T, e, np.int64),
                    "index": index + frame_index, "task_index": np.zeros(T, np.int64)}
            if video_key is not None:
                cols[video_key] = arrays[RGB_KEY]
            row: dict[str, Any] = {"episode_index": e, "tasks": [task], "length": T,
                                   "data/chunk_index": location["chunk_index"],
                                   "data/file_index": location["file_index"],
                                   "dataset_from_index": index, "dataset_to_index": index + T}
            if video_key is not None:
                row.update({f"videos/{video_key}/chunk_index": location["chunk_index"],
                            f"videos/{video_key}/file_index": location["file_index"],
                            f"videos/{video_key}/from_timestamp": video_start / fps,
                            f"videos/{video_key}/to_timestamp": (video_start + T) / fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            for key, values in cols.items():
                stats = feature_stats(values, image=key == video_key)
                row.update({f"stats/{key}/{name}": v.tolist() for name, v in stats.items()})
                per_feature.setdefault(key, []).append(values)
                if key != video_key:
                    columns.setdefault(key, []).append(values)
            row.update(_episode_row(arrays))
            rows.append(row)
            index += T
            video_start += T
        data_path = out / DATA_PATH.format(**location)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({key: _arrow_column(np.concatenate(parts)) for key, parts in columns.items()}),
                       data_path)
        if video_key is not None:
            frames = np.concatenate([episodes[e][RGB_KEY] for e in group])
            _encode_video(out / VIDEO_PATH.format(video_key=video_key, **location), frames, fps)

    episodes_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), episodes_path)
    _write_tasks(out, [task])
    stats = {key: {name: v.tolist() for name, v in feature_stats(np.concatenate(parts), image=key == video_key).items()}
             for key, parts in per_feature.items()}
    (out / STATS_PATH).write_text(json.dumps(stats, indent=1))
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": ROBOT_TYPE,
        "total_episodes": len(episodes), "total_frames": index, "total_tasks": 1,
        "chunks_size": CHUNK_SIZE, "data_files_size_in_mb": DATA_FILE_SIZE_MB, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_key is not None else None,
        "features": _features(episodes[0], video_key, fps),
        "groundloop": {"repo_id": repo_id or f"local/{out.name}",
                       "source": {k: v for k, v in meta.items() if k not in ("episodes", "n_episodes", "n_success")}},
    }
    (out / INFO_PATH).write_text(json.dumps(info, indent=1))
    return info
