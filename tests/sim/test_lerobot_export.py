"""LeRobot v3.0 export and import: the real `lerobot-doctor` finds the export well-formed, and the
round trip gives back the demo arrays (bit-exact; camera frames within H.264 tolerance)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.dataset import load_episodes
from sim.dataset import EPISODE_SCHEMA, load_episode
from sim.lerobot_export import CODEBASE_VERSION, IMAGE_PREFIX, RGB_KEY, export_lerobot
from sim.lerobot_import import read_lerobot
from tests.nodes.action_expert.conftest import write_demos

SEEDS = [0, 1, 2]
IMAGE_H, IMAGE_W = 32, 48
#: mean absolute pixel error allowed after H.264 at crf 18 on smooth synthetic frames
VIDEO_TOLERANCE = 3.0
#: checks about the format (the others judge the synthetic data's content: constant colours, short episodes)
FORMAT_CHECKS = ("Metadata & Format Compliance", "Temporal Consistency", "Video Integrity",
                 "Feature Consistency", "Portability")
DOCTOR = Path(sys.executable).parent / "lerobot-doctor"


def _frames(T: int, seed: int) -> np.ndarray:
    """Smooth moving gradients, (T, H, W, 3) uint8: what a camera would add to an episode."""
    yy, xx = np.mgrid[:IMAGE_H, :IMAGE_W]
    return np.stack([np.stack([(xx * 4 + t * 3) % 256, (yy * 6 + seed * 20) % 256, np.full_like(xx, 100)], -1)
                     for t in range(T)]).astype(np.uint8)


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic demos, each with camera frames under the optional `rgb` key."""
    directory = write_demos(tmp_path_factory.mktemp("demos") / "PickCube-v1", SEEDS)
    for path in sorted(directory.glob("episode_*.npz")):
        arrays = dict(np.load(path))
        arrays[RGB_KEY] = _frames(len(arrays["action"]), int(arrays["seed"]))
        np.savez(path, **arrays)
    return directory


@pytest.fixture(scope="module")
def exported(demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "pickcube"
    export_lerobot(demos, out, repo_id="local/pickcube")
    return out


def test_layout_is_lerobot_v3(exported: Path) -> None:
    info = json.loads((exported / "meta/info.json").read_text())
    assert info["codebase_version"] == CODEBASE_VERSION and info["fps"] == 20
    assert info["total_episodes"] == len(SEEDS) and info["total_tasks"] == 1
    video_key = IMAGE_PREFIX + "base_camera"
    assert info["features"][video_key]["dtype"] == "video"
    assert info["features"]["action"]["shape"] == [7] and info["features"]["observation.state"]["shape"] == [8]
    for path in ("meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                 "data/chunk-000/file-000.parquet", f"videos/{video_key}/chunk-000/file-000.mp4"):
        assert (exported / path).is_file(), path
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_to_index"] - e["dataset_from_index"] for e in episodes] == [e["length"] for e in episodes]
    assert sum(e["length"] for e in episodes) == info["total_frames"]
    assert pq.read_table(exported / "meta/tasks.parquet").to_pylist() == [{"task_index": 0, "task": "PickCube-v1"}]


def test_lerobot_doctor_finds_no_fault(exported: Path) -> None:
    done = subprocess.run([str(DOCTOR), "check", "--json", str(exported)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format_version"] == "v3" and report["summary"]["FAIL"] == 0
    severity = {check["name"]: check["severity"] for check in report["checks"]}
    assert {name: severity[name] for name in FORMAT_CHECKS} == {name: "PASS" for name in FORMAT_CHECKS}


def test_round_trip_gives_the_demo_arrays(demos: Path, exported: Path) -> None:
    imported = dict(read_lerobot(exported))
    assert list(imported) == [f"pickcube/episode_{seed:06d}" for seed in SEEDS]
    for seed, arrays in zip(SEEDS, imported.values()):
        original = load_episode(demos / f"episode_{seed:06d}.npz")
        for key in EPISODE_SCHEMA:
            assert arrays[key].dtype == original[key].dtype, key
            np.testing.assert_array_equal(arrays[key], original[key], err_msg=key)
        error = np.abs(arrays[RGB_KEY].astype(np.int16) - original[RGB_KEY]).mean()
        assert arrays[RGB_KEY].shape == original[RGB_KEY].shape and error < VIDEO_TOLERANCE


def test_load_episodes_reads_the_export_like_the_demos(demos: Path, exported: Path) -> None:
    config = ActionExpertConfig()
    from_demos = load_episodes([demos], config, load_point_cloud=True)
    from_export = load_episodes([exported], config, load_point_cloud=True)
    assert len(from_export) == len(from_demos) == len(SEEDS)
    for a, b in zip(from_demos, from_export):
        for field in ("state", "guidance", "action", "ee_xyz", "points_base"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_export_refuses_to_overwrite(demos: Path, exported: Path) -> None:
    with pytest.raises(FileExistsError):
        export_lerobot(demos, exported)
