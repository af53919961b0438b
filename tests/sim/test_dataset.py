"""Demo generation end to end: the dataset contract, waypoint geometry, resume and recorded failures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim import dataset
from sim.dataset import EPISODE_SCHEMA, episode_path, generate_demos, load_episode, load_meta, validate_episode
from sim.demos import GRASP, LIFT, PLAN_FAILED, PRE_GRASP, ExpertResult, MotionPlanningExpert
from sim.evaluate import evaluate_oracle
from sim.maniskill_robot import CameraSpec
from sim.pointcloud import invert_transform, transform_points, transform_pose

TASK = "PickCube-v1"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demos") / TASK
    generate_demos(TASK, 2, out, seed_start=0, progress=False)
    return out


@pytest.mark.slow
def test_meta_describes_the_dataset(demo_dir: Path) -> None:
    meta = load_meta(demo_dir)
    assert meta["task"] == TASK and meta["control_mode"] == "pd_ee_delta_pose"
    assert meta["fps"] == 20 and meta["n_points"] == 1024
    assert meta["camera"] == CameraSpec().to_dict()
    assert [e["seed"] for e in meta["episodes"]] == [0, 1]
    assert all(e["success"] and e["file"] == episode_path(demo_dir, e["seed"]).name for e in meta["episodes"])


@pytest.mark.slow
def test_episode_files_follow_the_contract(demo_dir: Path) -> None:
    meta = load_meta(demo_dir)
    for entry in meta["episodes"]:
        ep = load_episode(demo_dir / entry["file"])  # validates dtypes and shapes
        T = entry["length"]
        assert ep["cloud_xyz"].shape == (T, 1024, 3) and ep["action"].shape == (T, 7)
        assert ep["seed"] == entry["seed"] and bool(ep["success"])
        assert np.abs(ep["action"]).max() <= 1.0
        assert (ep["cloud_xyz"][..., 2] > 0).all()  # camera frame: everything in front of the camera
        assert ep["cloud_is_target"][0].sum() >= 10  # the cube survives cropping and sampling
        assert list(ep["waypoint_names"]) == ["pre_grasp", "grasp", "lift", "goal"]
        assert (np.diff(ep["waypoint_step"]) > 0).all()
        assert list(ep["waypoints_base"][:, 7]) == [1.0, -1.0, -1.0, -1.0]
        # the camera-frame waypoints are the base-frame ones seen through T_base_camera
        T_camera_base = invert_transform(ep["T_base_camera"].astype(np.float64))
        for wb, wc in zip(ep["waypoints_base"], ep["waypoints_camera"]):
            np.testing.assert_allclose(transform_pose(T_camera_base, wb[:7]), wc[:7], atol=1e-5)
        # the TCP is at each waypoint at its step
        for wb, step in zip(ep["waypoints_base"], ep["waypoint_step"]):
            assert np.linalg.norm(ep["ee_pose"][step, :3] - wb[:3]) < 0.01
        # the goal is where the demo ends
        assert np.linalg.norm(ep["ee_pose"][-1, :3] - ep["goal_pos"]) < 0.02


@pytest.mark.slow
def test_grasp_waypoint_is_on_the_cube(demo_dir: Path) -> None:
    ep = load_episode(episode_path(demo_dir, 0))
    names = list(ep["waypoint_names"])
    cube_cam = ep["cloud_xyz"][0][ep["cloud_is_target"][0]]
    cube_base = transform_points(ep["T_base_camera"].astype(np.float64), cube_cam.astype(np.float64))
    grasp = ep["waypoints_base"][names.index(GRASP)]
    # the TCP closes at the cube's centre: inside the box of its visible points (top face z ~ 4 cm)
    lo, hi = cube_base.min(0) - 0.01, cube_base.max(0) + 0.01
    assert np.all(grasp[:3] >= lo[:3]) and np.all(grasp[:3] <= hi[:3]), (grasp[:3], lo, hi)
    assert np.linalg.norm(grasp[:2] - cube_base[:, :2].mean(0)) < 0.015
    pre = ep["waypoints_base"][names.index(PRE_GRASP)]
    lift = ep["waypoints_base"][names.index(LIFT)]
    np.testing.assert_allclose(pre[:3] - grasp[:3], [0, 0, 0.05], atol=1e-3)  # approach from above
    assert lift[2] > grasp[2] + 0.05


@pytest.mark.slow
def test_resume_skips_done_seeds_and_records_plan_failures(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mtimes = {p: p.stat().st_mtime_ns for p in demo_dir.glob("episode_*.npz")}
    (demo_dir / (episode_path(demo_dir, 2).name + ".tmp")).write_bytes(b"half a file from a killed run")
    ran: list[int] = []
    original_run = MotionPlanningExpert.run

    def run(self: MotionPlanningExpert, seed: int, on_step=None) -> ExpertResult:
        ran.append(seed)
        if seed == 3:
            return ExpertResult(seed=seed, status=PLAN_FAILED, n_steps=0)
        return original_run(self, seed, on_step)

    monkeypatch.setattr(MotionPlanningExpert, "run", run)
    meta = generate_demos(TASK, 4, demo_dir, seed_start=0, progress=False)
    assert ran == [2, 3]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert not list(demo_dir.glob("*.tmp"))
    validate_episode(load_episode(episode_path(demo_dir, 2)))
    failed = [e for e in meta["episodes"] if e["seed"] == 3]
    assert failed == [{"seed": 3, "status": PLAN_FAILED, "success": False, "length": 0, "file": None}]
    assert json.loads((demo_dir / dataset.META_FILE).read_text())["n_success"] == 3

    ran.clear()
    generate_demos(TASK, 4, demo_dir, seed_start=0, progress=False)
    assert ran == []  # neither the done seeds nor the recorded failure run again


@pytest.mark.slow
def test_validate_episode_names_the_bad_key(demo_dir: Path) -> None:
    ep = load_episode(episode_path(demo_dir, 0))
    bad = dict(ep, gripper=ep["gripper"].astype(np.float64))
    with pytest.raises(ValueError, match="gripper"):
        validate_episode(bad)
    with pytest.raises(ValueError, match="qpos"):
        validate_episode(dict(ep, qpos=ep["qpos"][:-1]))
    assert set(ep) == set(EPISODE_SCHEMA)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["PushCube-v1", "StackCube-v1"])
def test_oracle_solves_the_other_tasks(task: str) -> None:
    summary = evaluate_oracle(task, [0, 1])
    assert summary["n"] == 2 and summary["success_rate"] == 1.0, summary
