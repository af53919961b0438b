"""The reference ManiSkill robot server in its own process, driven across the bridge (tcp, CURVE): the
same scene as in-process from the same seed, and the pick_cube graph running short episodes on it."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from nodes.evaluate import evaluate
from pipeline.graph import GraphError, load_graph
from robot.bridge import BridgeRobot
from sim.bridge_server import start_server_process
from sim.maniskill_robot import ManiSkillRobot
from streaming.security import generate_keys

BRIDGE_GRAPH = "configs/pick_cube_bridge.yaml"
SEED = 1000
EPISODES, STEPS = 2, 12
SERVER_EXIT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_bridge_graph_loads_and_a_bridge_without_endpoint_is_an_error() -> None:
    graph = load_graph(BRIDGE_GRAPH)
    assert graph.nodes["env"].params.robot == "bridge"
    with pytest.raises(GraphError) as err:
        load_graph(BRIDGE_GRAPH, ["env.endpoint=null"])
    assert "env" in str(err.value) and "endpoint" in str(err.value)


@pytest.mark.slow
def test_the_graph_drives_the_simulator_across_the_bridge(tmp_path: Path, pick_robot: ManiSkillRobot) -> None:
    keys = generate_keys(tmp_path / "keys")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = start_server_process(endpoint, keys, "--max-episode-steps", "150")
    try:
        remote = BridgeRobot(endpoint, keys_dir=keys)
        remote.connect()
        try:
            across, local = remote.reset(seed=SEED), pick_robot.reset(seed=SEED)
            np.testing.assert_array_equal(across.qpos, local.qpos)
            for name in ("rgb", "depth", "segmentation", "intrinsics", "T_base_camera"):
                np.testing.assert_array_equal(getattr(across.cameras["base_camera"], name),
                                              getattr(local.cameras["base_camera"], name))
            np.testing.assert_array_equal(across.extras["goal_pos"], local.extras["goal_pos"])
            action = np.array([0.3, 0.1, -0.2, 0.0, 0.0, 0.0, 1.0], np.float32)
            remote.send_action(action)
            pick_robot.send_action(action)
            np.testing.assert_allclose(remote.get_observation().ee_pose, pick_robot.get_observation().ee_pose,
                                       atol=1e-6)
        finally:
            remote.disconnect()

        overrides = [f"env.endpoint={endpoint}", f"env.keys_dir={keys}", f"env.max_episode_steps={STEPS}"]
        summary = evaluate(BRIDGE_GRAPH, EPISODES, SEED, "inproc", overrides)
        assert summary["episodes"] == EPISODES
        assert [r["seed"] for r in summary["per_episode"]] == [SEED, SEED + 1]
        assert all(0 < r["steps"] <= STEPS for r in summary["per_episode"])

        monitor = BridgeRobot(endpoint, keys_dir=keys)
        monitor.connect()
        stats = monitor.server_stats()
        monitor.disconnect()
        assert stats["commands"] == 1 + sum(r["steps"] for r in summary["per_episode"])
        assert stats["rejected"] == 0 and stats["robot_errors"] == 0 and stats["resets"] == 1 + EPISODES
    finally:
        server.terminate()
        assert server.wait(SERVER_EXIT_S) == 0
