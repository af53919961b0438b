"""Demo directories → one compact file (a "pack") that the expert trains from on another machine.

A demo directory costs ~1.5 MB per episode (1024 float32 points per step, colours, labels), but the
expert reads only the ee pose, gripper, actions, waypoints and `n_points` of each step's cloud. A pack
keeps exactly those, the cloud as a random `n_points` subset (the runtime also samples at random)
quantized to 1 mm in the camera frame and LZMA-compressed (zlib saves a third less): 200 PickCube demos
shrink from ~300 MB to ~28 MB,
small enough to carry to a lent GPU machine. `groundloop train action-expert --data PACK.npz` reads it
like a directory.

    python -m nodes.action_expert.pack --data data/demos/PickCube-v1 --out data/packs/pickcube.npz
"""
from __future__ import annotations

import argparse
import json
import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

PACK_FORMAT_VERSION = 1
#: cloud quantization step, metres (the simulator's depth is exact; 1 mm is far below the cube's 4 cm)
QUANTUM_M = 0.001
_PER_STEP = ("ee_pose", "gripper", "action")
#: what a truncated or damaged file raises from the zip, zlib and lzma layers
_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, lzma.LZMAError)


class PackError(ValueError):
    """A file that is not a readable pack of this version."""


def is_pack(path: Path) -> bool:
    """A pack is a file; a demo set is a directory."""
    return Path(path).suffix == ".npz" and Path(path).is_file()


def pack_demos(episode_files: list[Path], out: Path, *, n_points: int = 512, seed: int = 0) -> dict[str, int]:
    """Write the successful episodes `episode_files` to `out`; returns counts for the log."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in (*_PER_STEP, "cloud_mm", "waypoints_base", "T_base_camera")}
    lengths, n_waypoints, names = [], [], []
    for path in episode_files:
        with np.load(path) as data:
            cloud = data["cloud_xyz"]  # (T, N, 3) camera frame
            T, n_cloud = cloud.shape[:2]
            pick = np.stack([rng.choice(n_cloud, size=n_points, replace=n_cloud < n_points) for _ in range(T)])
            subset = np.take_along_axis(cloud, pick[..., None], axis=1)  # (T, P, 3)
            arrays["cloud_mm"].append(np.round(subset / QUANTUM_M).astype(np.int16))
            for key in _PER_STEP:
                arrays[key].append(data[key].astype(np.float32))
            arrays["waypoints_base"].append(data["waypoints_base"].astype(np.float32))
            arrays["T_base_camera"].append(data["T_base_camera"].astype(np.float32)[None])
            lengths.append(T)
            n_waypoints.append(len(data["waypoints_base"]))
            names.append(f"{path.parent.name}/{path.stem}")
    if not lengths:
        raise PackError(f"nothing to pack into {out}: no episodes given")
    cloud_mm = np.concatenate(arrays.pop("cloud_mm"))  # (ΣT, P, 3) int16
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        format_version=np.int32(PACK_FORMAT_VERSION),
        quantum_m=np.float32(QUANTUM_M),
        lengths=np.asarray(lengths, np.int32),
        n_waypoints=np.asarray(n_waypoints, np.int32),
        names=np.asarray(names),
        cloud_mm_lzma=np.frombuffer(lzma.compress(cloud_mm.tobytes()), dtype=np.uint8),
        cloud_mm_shape=np.asarray(cloud_mm.shape, np.int64),
        **{k: np.concatenate(v) for k, v in arrays.items()},
    )
    tmp.replace(out)  # a half-written pack never carries the final name
    return {"episodes": len(lengths), "steps": int(sum(lengths)), "bytes": out.stat().st_size}


def read_pack(path: Path) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(name, arrays) per episode, arrays as a demo episode holds them (cloud_xyz float32, camera frame)."""
    try:
        data = np.load(path, allow_pickle=False)
    except _DAMAGE as exc:
        raise PackError(f"{path}: not a readable pack ({exc})") from exc
    with data:
        version = int(data["format_version"]) if "format_version" in data.files else None
        if version != PACK_FORMAT_VERSION:
            raise PackError(f"{path}: pack format_version {version}, this reader knows {PACK_FORMAT_VERSION}")
        try:
            quantum = float(data["quantum_m"])
            step_ends = np.cumsum(data["lengths"])
            waypoint_ends = np.cumsum(data["n_waypoints"])
            per_step = {k: data[k] for k in _PER_STEP}
            cloud_bytes = lzma.decompress(data["cloud_mm_lzma"].tobytes())
            per_step["cloud_mm"] = np.frombuffer(cloud_bytes, dtype=np.int16).reshape(data["cloud_mm_shape"])
            waypoints, poses, names = data["waypoints_base"], data["T_base_camera"], data["names"]
        except _DAMAGE as exc:
            raise PackError(f"{path}: damaged pack ({type(exc).__name__}: {exc})") from exc
    for e, name in enumerate(names):
        s = slice(step_ends[e - 1] if e else 0, step_ends[e])
        w = slice(waypoint_ends[e - 1] if e else 0, waypoint_ends[e])
        arrays = {k: per_step[k][s] for k in _PER_STEP}
        arrays["cloud_xyz"] = per_step["cloud_mm"][s].astype(np.float32) * quantum
        arrays["waypoints_base"] = waypoints[w]
        arrays["T_base_camera"] = poses[e]
        yield str(name), arrays


def main(argv: list[str] | None = None) -> int:
    from nodes.action_expert.dataset import demo_files  # the demo directory contract lives there

    parser = argparse.ArgumentParser(prog="python -m nodes.action_expert.pack", description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", required=True, help="demo directory (repeat for several)")
    parser.add_argument("--out", required=True, help="pack file to write (.npz)")
    parser.add_argument("--n-points", type=int, default=512, help="points kept per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        parser.error(f"--out {out}: a pack is an .npz file")
    files = [path for d in args.data for path in demo_files(Path(d))]
    print(json.dumps({"out": str(out), **pack_demos(files, out, n_points=args.n_points, seed=args.seed)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
