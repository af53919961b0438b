"""A LeRobotDataset v3.0 directory written by `sim.lerobot_export` → episode arrays in the npz contract.

Reads with pyarrow and av only (LeRobot's own reader needs torchvision, which does not install beside
CPU torch), so `groundloop train action-expert --data data/lerobot/pickcube` trains from an export as
from the demo directory it came from. Episodes are rebuilt from the offsets in meta/episodes (v3 packs
many episodes per file), not from file boundaries.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sim.dataset import EPISODE_SCHEMA, validate_episode
from sim.lerobot_export import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODE_CONSTANTS,
    EXTRA_PREFIX,
    FRAME_ARRAYS,
    IMAGE_PREFIX,
    INFO_PATH,
    RGB_KEY,
)

STATE_KEY = "observation.state"


class LeRobotFormatError(ValueError):
    """A directory that is not a LeRobot v3 export this reader understands."""


def is_lerobot(path: Path) -> bool:
    """A LeRobot dataset is a directory with meta/info.json (a demo directory has meta.json)."""
    return (Path(path) / INFO_PATH).is_file()


def read_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked to be a v3 dataset with the features the contract needs."""
    info = json.loads((Path(root) / INFO_PATH).read_text())
    version = str(info.get("codebase_version", ""))
    if version.split(".")[0] != CODEBASE_VERSION.split(".")[0]:
        raise LeRobotFormatError(f"{root}: codebase_version {version!r}, expected {CODEBASE_VERSION}")
    missing = {STATE_KEY, *FRAME_ARRAYS} - info.get("features", {}).keys()
    if missing:
        raise LeRobotFormatError(f"{root}: features {sorted(missing)} missing; export with "
                                 f"`groundloop sim export-lerobot`")
    return info


def _to_numpy(column: Any) -> np.ndarray:
    """A pyarrow column of nested fixed-size lists → (R, *shape) array (the inverse of the export)."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    shape: list[int] = []
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False).reshape(len(column), *shape)


def _constant(value: Any, key: str) -> np.ndarray:
    """A `groundloop/<key>` episode cell → the contract's array (K, the varying size, inferred)."""
    dtype, shape = EPISODE_SCHEMA[key]
    if dtype == "U":
        return np.array(value, dtype=str).reshape(-1)
    array = np.asarray(value, dtype=dtype)
    return array if not shape else array.reshape([-1 if isinstance(d, str) else d for d in shape])


def _decode_video(path: Path) -> np.ndarray:
    """Every frame of an MP4 as (F, H, W, 3) uint8."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def read_lerobot(root: Path, *, images: bool = True) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(name, arrays) per episode in episode order; arrays follow the npz contract (plus `rgb`
    (T, H, W, 3) when the dataset has a video feature and `images`)."""
    import pyarrow.parquet as pq

    root = Path(root)
    info = read_info(root)
    fps = info["fps"]
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video" and k.startswith(IMAGE_PREFIX)]
    video_key = video_keys[0] if images and video_keys else None
    episode_files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    rows = sorted((row for path in episode_files for row in pq.read_table(path).to_pylist()),
                  key=lambda r: r["episode_index"])
    tables: dict[Path, Any] = {}
    videos: dict[Path, np.ndarray] = {}
    for row in rows:
        location = {"chunk_index": row["data/chunk_index"], "file_index": row["data/file_index"]}
        path = root / info.get("data_path", DATA_PATH).format(**location)
        if path not in tables:
            tables = {path: pq.read_table(path)}  # files hold consecutive episodes: keep one at a time
        table = tables[path]
        first = int(table.column("index")[0].as_py())
        frames = table.slice(row["dataset_from_index"] - first, row["length"])
        state = _to_numpy(frames.column(STATE_KEY))
        arrays = {"ee_pose": state[:, :7].copy(), "gripper": state[:, 7].copy()}
        for key, src in FRAME_ARRAYS.items():  # vectors back to the contract's (T, N[, 3])
            arrays[src] = _to_numpy(frames.column(key)).reshape(len(state), -1, *EPISODE_SCHEMA[src][1][2:])
        arrays.update({key: _constant(row[EXTRA_PREFIX + key], key) for key in EPISODE_CONSTANTS})
        if video_key is not None:
            video_path = root / info["video_path"].format(
                video_key=video_key, chunk_index=row[f"videos/{video_key}/chunk_index"],
                file_index=row[f"videos/{video_key}/file_index"])
            if video_path not in videos:
                videos = {video_path: _decode_video(video_path)}
            start = round(row[f"videos/{video_key}/from_timestamp"] * fps)
            arrays[RGB_KEY] = videos[video_path][start:start + row["length"]]
        name = f"{root.name}/episode_{int(arrays['seed']):06d}"
        validate_episode(arrays, f"{root} {name}")
        yield name, arrays
