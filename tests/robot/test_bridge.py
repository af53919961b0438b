"""The robot bridge against a fake arm: authentication, the server's own limits and watchdog, and
observations (cameras included) arriving intact. No simulator; the server runs on a thread here, and
the client that dies runs in a process of its own."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from robot.bridge import (
    COMMAND, HELLO, PROTOCOL_VERSION, BridgeAuthError, BridgeError, BridgeRobot, BridgeTimeout,
    CommandRejected,
)
from robot.bridge_server import CLIENTS_LOST, COMMANDS, REJECTED, WATCHDOG_HOLDS, RobotServer
from robot.interface import CameraObservation, Robot, RobotObservation
from streaming.codec import Payload, decode, encode
from streaming.security import generate_keys

NAMES = ("dx", "dy", "dz", "drx", "dry", "drz", "gripper")
WATCHDOG_S = 0.3
CLIENT_TIMEOUT_S = 0.6
WAIT_S = 10.0  # generous bound for things that must happen (a loaded machine is slow, never wrong)
REPO = Path(__file__).resolve().parents[2]
SAFE = np.array([0.1, -0.1, 0.05, 0.2, 0.0, -0.1, 1.0], np.float32)


class FakeArm(Robot):
    """Records every action it is sent and when; one 8×6 camera with every array the bridge carries."""

    action_names = NAMES
    control_mode = "pd_ee_delta_pose"

    def __init__(self) -> None:
        self.actions: list[tuple[float, np.ndarray]] = []
        self.seeds: list[int | None] = []
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def reset(self, seed: int | None = None) -> RobotObservation:
        self.seeds.append(seed)
        return self.get_observation()

    def send_action(self, action: np.ndarray) -> None:
        self.actions.append((time.monotonic(), np.array(action)))

    def get_observation(self) -> RobotObservation:
        rng = np.random.default_rng(len(self.actions))
        camera = CameraObservation(
            rgb=rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), depth=rng.random((6, 8), dtype=np.float32),
            intrinsics=np.array([[5.0, 0, 4], [0, 5, 3], [0, 0, 1]]), T_base_camera=np.eye(4),
            segmentation=rng.integers(0, 3, (6, 8), dtype=np.int32), segmentation_labels={1: "cube", 2: "table"})
        return RobotObservation(
            stamp_ns=time.monotonic_ns(), qpos=np.arange(9, dtype=np.float32), qvel=np.zeros(9, np.float32),
            ee_pose=np.array([0.3, 0.0, 0.2, 0, 1, 0, 0], np.float32), gripper=0.5, cameras={"base_camera": camera},
            extras={"success": False, "goal_pos": np.array([0.1, 0.2, 0.3]), "evaluation": {"is_grasped": 0.0},
                    "elapsed_steps": len(self.actions), "task": "Fake-v0"})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def served(keys: Path) -> Iterator[tuple[RobotServer, FakeArm]]:
    arm = FakeArm()
    server = RobotServer(arm, "tcp://127.0.0.1:*", keys_dir=keys, state_endpoint="tcp://127.0.0.1:*",
                         watchdog_s=WATCHDOG_S, client_timeout_s=CLIENT_TIMEOUT_S).start()
    yield server, arm
    server.stop()


def client(server: RobotServer, keys: Path | None, **kwargs: object) -> BridgeRobot:
    return BridgeRobot(server.endpoint, keys_dir=keys, state_endpoint=server.state_endpoint, **kwargs)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_tcp_without_keys_is_refused_unless_insecure() -> None:
    with pytest.raises(ValueError, match="tcp:// needs CURVE keys"):
        BridgeRobot("tcp://127.0.0.1:5555")
    with pytest.raises(ValueError, match="tcp:// needs CURVE keys"):
        RobotServer(FakeArm(), "tcp://127.0.0.1:5555")
    BridgeRobot("tcp://127.0.0.1:5555", insecure=True)  # explicit: allowed
    BridgeRobot("ipc:///tmp/groundloop-robot", keys_dir=None)  # same host: allowed


def test_a_step_round_trip_carries_state_cameras_and_extras(served, keys: Path) -> None:
    server, arm = served
    robot = client(server, keys)
    robot.connect()
    try:
        assert robot.action_names == NAMES and robot.control_mode == "pd_ee_delta_pose"
        first = robot.reset(seed=7)
        assert arm.seeds == [7]
        before = time.monotonic_ns()
        robot.send_action(SAFE)
        obs = robot.get_observation()
        np.testing.assert_array_equal(arm.actions[-1][1], SAFE)  # executed exactly as sent
        expected = arm.get_observation()
        camera, sent = obs.cameras["base_camera"], expected.cameras["base_camera"]
        for name in ("rgb", "depth", "intrinsics", "T_base_camera", "segmentation"):
            np.testing.assert_array_equal(getattr(camera, name), getattr(sent, name))
            assert getattr(camera, name).dtype == getattr(sent, name).dtype
        assert camera.segmentation_labels == {1: "cube", 2: "table"}
        np.testing.assert_array_equal(obs.qpos, expected.qpos)
        np.testing.assert_array_equal(obs.extras["goal_pos"], [0.1, 0.2, 0.3])
        assert obs.extras["evaluation"] == {"is_grasped": 0.0} and obs.extras["task"] == "Fake-v0"
        assert obs.extras["elapsed_steps"] == 1 and first.extras["elapsed_steps"] == 0
        assert obs.stamp_ns <= time.monotonic_ns() and obs.stamp_ns > before - 10**9  # on this host's clock
        assert robot.get_observation().extras["elapsed_steps"] == 1  # a fresh observation from the server
        assert robot.server_stats()[COMMANDS] == 1
    finally:
        robot.disconnect()


@pytest.mark.parametrize("wrong", ["other keys", "insecure"])
def test_a_client_without_the_curve_key_is_refused(served, keys: Path, tmp_path: Path, wrong: str) -> None:
    server, arm = served
    if wrong == "other keys":  # its own key pair, and another server's public key
        robot = client(server, generate_keys(tmp_path / "stranger"), connect_timeout_s=WAIT_S)
    else:
        robot = BridgeRobot(server.endpoint, insecure=True, state_endpoint=server.state_endpoint,
                            connect_timeout_s=WAIT_S)
    with pytest.raises(BridgeAuthError, match="authentication failed"):
        robot.connect()
    wait_for(lambda: server.stats["auth_failures"] >= 1, "the server to count the refusal")
    assert arm.actions == [] and arm.seeds == []  # the robot never moved


def test_an_unauthorised_client_key_is_refused(served, keys: Path, tmp_path: Path) -> None:
    """Knows the server's public key, but its own key is not in authorized/."""
    stranger = generate_keys(tmp_path / "stranger")
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
    with pytest.raises(BridgeAuthError, match="not in the server's keys_dir/authorized"):
        client(served[0], stranger, connect_timeout_s=WAIT_S).connect()
    assert served[1].actions == []


def test_nobody_listening_is_a_timeout_that_says_unreachable(keys: Path) -> None:
    robot = BridgeRobot("tcp://127.0.0.1:9", keys_dir=keys, connect_timeout_s=0.3)
    with pytest.raises(BridgeTimeout, match="unreachable"):
        robot.connect()


@pytest.mark.parametrize("action, field", [
    ([np.nan, 0, 0, 0, 0, 0, 1], "action.dx"),
    ([0, 0, 0, 0, np.inf, 0, 1], "action.dry"),
    ([0, 0.9, 0, 0, 0, 0, 1], "action.dy"),  # 9 cm in one step, max_step_m is 5 cm
    ([0, 0, 0, 0, 0, 2.0, 1], "action.drz"),  # 0.2 rad, max_step_rad is 0.1
    ([0, 0, 0, 0, 0, 0, 3.0], "action.gripper"),
    ([0, 0, 0], "action"),
])
def test_out_of_limit_and_non_finite_commands_are_refused(served, keys: Path, action: list, field: str) -> None:
    server, arm = served
    robot = client(server, keys)
    robot.connect()
    try:
        robot.reset()
        with pytest.raises(CommandRejected) as err:
            robot.send_action(np.array(action, np.float32))
        assert err.value.field == field and field.split(".")[-1] in str(err.value)
        assert arm.actions == [] and server.stats[REJECTED] == 1
        robot.send_action(SAFE)  # the session goes on
        assert len(arm.actions) == 1
    finally:
        robot.disconnect()


def test_limits_hold_whatever_a_raw_client_sends(served, keys: Path) -> None:
    """A hand-written client skipping BridgeRobot: malformed frames, unknown requests, a NaN command."""
    server, arm = served
    from streaming.security import load_keys

    curve = load_keys(keys)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.curve_serverkey, sock.curve_publickey = curve.server_public, curve.client_public
    sock.curve_secretkey = curve.client_secret
    sock.connect(server.endpoint)

    def ask(frames: list) -> dict:
        sock.send_multipart(frames)
        assert sock.poll(WAIT_S * 1000), "no reply"
        return decode(sock.recv_multipart()).fields

    try:
        assert "malformed" in ask([b"garbage"])["error"]
        assert ask(encode(Payload("launch", {"session": "s"})))["field"] == "type"
        assert ask(encode(Payload(COMMAND, {"session": "s"}, {"action": SAFE})))["field"] == "session"  # no hello
        assert ask(encode(Payload(HELLO, {"session": "s", "version": PROTOCOL_VERSION})))["ok"]
        bad = SAFE.astype(np.float64)
        bad[2] = np.nan
        assert ask(encode(Payload(COMMAND, {"session": "s"}, {"action": bad})))["field"] == "action.dz"
        assert ask(encode(Payload(COMMAND, {"session": "s"}, {"action": np.array(["go"])})))["field"] == "action"
        no_action = [b"GLMS\x01\x00" + msgpack.packb({"t": COMMAND, "f": {"session": "s"}, "a": []})]
        assert ask(no_action)["field"] == "action"
        assert arm.actions == []
    finally:
        context.destroy(linger=0)


def test_the_server_holds_when_a_live_client_stops_commanding(served, keys: Path) -> None:
    server, arm = served
    robot = client(server, keys)
    robot.connect()
    try:
        robot.reset()
        robot.send_action(SAFE)
        wait_for(lambda: server.stats[WATCHDOG_HOLDS] == 1, "the watchdog's hold")
        (sent_at, _), (held_at, hold) = arm.actions
        np.testing.assert_array_equal(hold, [0, 0, 0, 0, 0, 0, SAFE[6]])  # still, gripper as commanded
        assert held_at - sent_at >= WATCHDOG_S
        time.sleep(2 * CLIENT_TIMEOUT_S)  # heartbeats keep the session: not lost, and one hold is enough
        assert server.stats[CLIENTS_LOST] == 0 and len(arm.actions) == 2 and robot.server_alive
        robot.send_action(SAFE)  # commanding again re-arms
        assert len(arm.actions) == 3
    finally:
        robot.disconnect()


CLIENT_THAT_DIES = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from robot.bridge import BridgeRobot
    robot = BridgeRobot(sys.argv[1], keys_dir=sys.argv[2], state_endpoint=sys.argv[3])
    robot.connect()
    robot.reset(seed=1)
    for _ in range(3):
        robot.send_action(np.array([0.1, 0, 0, 0, 0, 0, -1.0], np.float32))
    os.kill(os.getpid(), signal.SIGKILL)  # no bye, no socket close
""")


def test_the_server_holds_the_robot_when_the_client_dies(served, keys: Path) -> None:
    server, arm = served
    command = [sys.executable, "-c", CLIENT_THAT_DIES, server.endpoint, str(keys), server.state_endpoint]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert process.returncode == -9, process.stderr
    assert len(arm.actions) >= 3
    wait_for(lambda: server.stats[CLIENTS_LOST] == 1, "the server to notice the dead client")
    assert server.stats[WATCHDOG_HOLDS] == 1
    *_, (last_command_at, last_command), (held_at, hold) = arm.actions
    np.testing.assert_array_equal(last_command, np.array([0.1, 0, 0, 0, 0, 0, -1.0], np.float32))
    np.testing.assert_array_equal(hold, [0, 0, 0, 0, 0, 0, -1.0])  # the grasp is kept
    assert held_at - last_command_at >= WATCHDOG_S
    successor = client(server, keys)  # the robot is free for the next client
    successor.connect()
    successor.disconnect()


def test_a_silent_client_resumes_control_but_not_on_a_restarted_server(served, keys: Path) -> None:
    server, arm = served
    robot = client(server, keys)
    robot.connect()
    try:
        robot.reset()
        robot._stop.set()  # its heartbeats stop, as when a model load starves the thread
        wait_for(lambda: server.stats[CLIENTS_LOST] == 1, "the server to drop the silent client")
        robot.send_action(SAFE)  # said hello again, then commanded
        assert len(arm.actions) == 1
        server.stop()
        successor = RobotServer(FakeArm(), server.endpoint, keys_dir=keys, state_endpoint=server.state_endpoint).start()
        try:
            with pytest.raises(BridgeError, match="restarted"):
                robot.send_action(SAFE)
        finally:
            successor.stop()
    finally:
        robot.disconnect()


def test_one_client_controls_the_robot_at_a_time(served, keys: Path) -> None:
    server, _ = served
    first, second = client(server, keys), client(server, keys, connect_timeout_s=WAIT_S)
    first.connect()
    try:
        with pytest.raises(BridgeError, match="controlled by another client"):
            second.connect()
    finally:
        first.disconnect()
    second.connect()  # freed by the first one's bye
    second.disconnect()


def test_bridge_modules_import_nothing_above_robot() -> None:
    code = ("import sys, robot.bridge, robot.bridge_server; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('pipeline', 'nodes', 'sim')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_heartbeats_must_come_faster_than_the_watchdog() -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        RobotServer(FakeArm(), "ipc:///tmp/groundloop-bridge-test", watchdog_s=0.1, heartbeat_s=0.2)
