"""The robot bridge, client side: `BridgeRobot` is a `Robot` whose arm (or simulator) is served by a
`RobotServer` on another process or host, so one graph drives either exactly as it drives a local one.

The protocol (robot/BRIDGE_PROTOCOL.md) is ZeroMQ with groundloop's codec: a DEALER -> ROUTER
request/reply channel for hello, reset, command, observe, stats and bye, a PUB channel for the
server's state and heartbeat, and client heartbeats on a second DEALER. tcp:// is CURVE-authenticated
unless `insecure` says otherwise; the server, not this client, enforces the limits and the watchdog.
Observations travel as raw array buffers (cameras included), never as pickles.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from robot.interface import CameraObservation, Robot, RobotObservation
from streaming.codec import CodecError, Payload, decode, encode
from streaming.security import CurveKeys, load_keys

log = logging.getLogger("groundloop.bridge")

PROTOCOL_VERSION = 1
SCHEME_TCP, SCHEME_IPC = "tcp", "ipc"
IPC_STATE_SUFFIX = ".state"  # ipc://PATH serves its state on ipc://PATH.state; tcp port P on P + 1
# requests, client -> server (DEALER -> ROUTER); every one but HEARTBEAT is answered with a REPLY
HELLO, RESET, COMMAND, OBSERVE = "hello", "reset", "command", "observe"
STATS, HEARTBEAT, BYE = "stats", "heartbeat", "bye"
REQUESTS = (HELLO, RESET, COMMAND, OBSERVE, STATS, HEARTBEAT, BYE)
REPLY = "reply"
SESSION_FIELD = "session"  # every request's session id; a refusal's `field` when the sender lacks control
STATE = "state"  # server -> subscribers (PUB): robot state, held flag and counters; doubles as heartbeat
DEFAULT_WATCHDOG_S = 0.5
DEFAULT_HEARTBEAT_S = 0.1
DEFAULT_CLIENT_TIMEOUT_S = 3.0  # a client silent this long loses control of the robot (held long before)
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 60.0  # a simulator server needs ~6 s to create its env
BYE_TIMEOUT_S = 1.0
SEND_RETRY_S = 0.01
CAMERA_PREFIX, EXTRAS_PREFIX = "cameras/", "extras/"
CAMERA_ARRAYS = ("rgb", "depth", "intrinsics", "T_base_camera", "segmentation")
STATE_ARRAYS = ("qpos", "qvel", "ee_pose")
HANDSHAKE_FAILURES = {  # worded for both ends: the client raises them, the server logs and counts them
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication failed: the client's CURVE public key is not in the "
                                     "server's keys_dir/authorized/",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "authentication failed: CURVE handshake broken off (the client's "
                                          "server.key is not this server's public key)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "authentication failed: handshake protocol error (CURVE on one side "
                                         "only, or keys that do not match)",
}


class BridgeError(RuntimeError):
    """The bridge could not do what was asked; the message names the server and the reason."""


class BridgeAuthError(BridgeError):
    """The CURVE handshake with the server failed: wrong or unauthorised keys, or CURVE on one side only."""


class BridgeTimeout(BridgeError, TimeoutError):
    """No reply in time: the server is down, unreachable or busy."""


class CommandRejected(BridgeError, ValueError):
    """The server refused a command (out of limits, NaN/inf, wrong shape); `field` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def bridge_security(endpoint: str, keys_dir: str | Path | None, insecure: bool) -> CurveKeys | None:
    """The CURVE keys `endpoint` needs: tcp:// is always authenticated unless `insecure` is set."""
    scheme = endpoint.split("://", 1)[0]
    if scheme not in (SCHEME_TCP, SCHEME_IPC) or "://" not in endpoint:
        raise ValueError(f"robot bridge endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    if insecure:
        if keys_dir is not None:
            raise ValueError(f"robot bridge {endpoint}: both keys_dir={keys_dir} and insecure=true; choose one")
        return None
    if keys_dir is None:
        if scheme == SCHEME_TCP:
            raise ValueError(f"robot bridge {endpoint}: tcp:// needs CURVE keys: set keys_dir (made by "
                             "`groundloop keys DIR`), or insecure=true for an unauthenticated trusted network")
        return None
    return load_keys(keys_dir)


def state_endpoint_for(endpoint: str) -> str:
    """Where a server on `endpoint` publishes its state: tcp port + 1, or ipc path + '.state'."""
    scheme, rest = endpoint.split("://", 1)
    if scheme != SCHEME_TCP:
        return endpoint + IPC_STATE_SUFFIX
    host, port = rest.rsplit(":", 1)
    return f"{SCHEME_TCP}://{host}:{port if port == '*' else int(port) + 1}"


def handshake_failure(socket_monitor: zmq.Socket) -> str | None:
    """The first handshake failure among the monitor's pending events, described; None if there is none."""
    while socket_monitor.poll(0):
        event = recv_monitor_message(socket_monitor)
        if event["event"] in HANDSHAKE_FAILURES:
            return f"{HANDSHAKE_FAILURES[event['event']]} (zmq status {event['value']})"
    return None


def monitor(sock: zmq.Socket) -> zmq.Socket:
    """A PAIR socket that receives `sock`'s handshake events (a unique address: fds get reused)."""
    events = zmq.EVENT_HANDSHAKE_SUCCEEDED
    for failure in HANDSHAKE_FAILURES:
        events |= failure
    return sock.get_monitor_socket(events, addr=f"inproc://bridge-monitor-{secrets.token_hex(8)}")


def _plain(value: Any) -> Any:
    """`value` with numpy scalars and nested arrays as plain Python (msgpack-able)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def observation_payload(obs: RobotObservation, type_name: str, fields: dict[str, Any]) -> Payload:
    """`obs` as a codec payload: state and camera arrays raw, extras' top-level arrays raw, the rest msgpack."""
    arrays: dict[str, np.ndarray] = {name: np.asarray(getattr(obs, name)) for name in STATE_ARRAYS}
    cameras: dict[str, dict[int, str]] = {}
    for name, camera in obs.cameras.items():
        cameras[name] = {int(i): str(label) for i, label in camera.segmentation_labels.items()}
        for array_name in CAMERA_ARRAYS:
            value = getattr(camera, array_name)
            if value is not None:
                arrays[f"{CAMERA_PREFIX}{name}/{array_name}"] = np.asarray(value)
    extras = {}
    for key, value in obs.extras.items():
        if isinstance(value, np.ndarray):
            arrays[EXTRAS_PREFIX + key] = value
        else:
            extras[key] = _plain(value)
    obs_fields = {"age_ns": time.monotonic_ns() - obs.stamp_ns, "gripper": float(obs.gripper),
                  "cameras": cameras, "extras": extras}
    return Payload(type_name, {**fields, "obs": obs_fields}, arrays)


def observation_from_payload(payload: Payload, received_ns: int) -> RobotObservation:
    """The observation in `payload`, stamped on this host's monotonic clock (received time minus its age)."""
    fields, arrays = payload.fields["obs"], payload.arrays
    cameras = {}
    for name, labels in fields["cameras"].items():
        parts = {a: arrays.get(f"{CAMERA_PREFIX}{name}/{a}") for a in CAMERA_ARRAYS}
        cameras[name] = CameraObservation(**parts, segmentation_labels={int(i): s for i, s in labels.items()})
    extras = dict(fields["extras"])
    extras.update({key[len(EXTRAS_PREFIX):]: value for key, value in arrays.items() if key.startswith(EXTRAS_PREFIX)})
    return RobotObservation(stamp_ns=received_ns - int(fields["age_ns"]), qpos=arrays["qpos"], qvel=arrays["qvel"],
                            ee_pose=arrays["ee_pose"], gripper=float(fields["gripper"]), cameras=cameras, extras=extras)


class BridgeRobot(Robot):
    """A `Robot` served by a `RobotServer` at `endpoint`; constructing it checks the security settings
    and connects nothing. One round trip per step: a command's reply carries the observation after it."""

    def __init__(self, endpoint: str, *, keys_dir: str | Path | None = None, insecure: bool = False,
                 state_endpoint: str | None = None, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.state_endpoint = state_endpoint or state_endpoint_for(endpoint)
        self.keys = bridge_security(endpoint, keys_dir, insecure)
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.session = secrets.token_hex(8)
        self.robot_info: dict[str, Any] = {}
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._next_id = 0
        self._fresh: RobotObservation | None = None  # the observation a command's reply carried
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._server_seen = 0.0  # monotonic time of the server's last state message

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Say hello (waiting up to connect_timeout_s for the server to come up), then start heartbeats."""
        if self._socket is not None:
            return
        self._context = zmq.Context()
        self._socket = self._dealer()
        self._monitor = monitor(self._socket)
        self._socket.connect(self.endpoint)
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        try:
            reply = self._request(HELLO, {"version": PROTOCOL_VERSION}, timeout_s=self.connect_timeout_s)
        except BaseException:
            self._close()
            raise
        self.robot_info = reply.fields["robot"]
        self.action_names = tuple(self.robot_info["action_names"])
        self.control_mode = self.robot_info["control_mode"]
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, args=(float(self.robot_info["heartbeat_s"]),),
                                           name=f"bridge-heartbeat-{self.session}", daemon=True)
        self._heartbeat.start()
        log.info("connected to robot server %s (%s, %s)", self.endpoint, self.control_mode,
                 "CURVE" if self.keys else "insecure")

    def disconnect(self) -> None:
        """Say bye (the server holds the robot and frees it for other clients); safe to call twice."""
        if self._socket is None:
            return
        try:
            self._request(BYE, timeout_s=BYE_TIMEOUT_S)
        except BridgeError as exc:
            log.warning("robot server %s: bye not acknowledged (%s); its watchdog will hold the robot",
                        self.endpoint, exc)
        self._close()

    def _close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        for sock in (self._socket, self._monitor):
            if sock is not None:
                self._poller.unregister(sock)
        if self._socket is not None:
            self._socket.disable_monitor()
        if self._context is not None:
            self._context.destroy(linger=0)
        self._context = self._socket = self._monitor = None

    # ------------------------------------------------------------------ Robot
    def reset(self, seed: int | None = None) -> RobotObservation:
        """Start an episode on the server (a simulator rebuilds its scene from `seed`)."""
        self._fresh = None
        return self._observation(self._request(RESET, {"seed": seed}))

    def send_action(self, action: np.ndarray) -> None:
        """Execute `action` on the server; CommandRejected names the field if the server refuses it."""
        reply = self._request(COMMAND, {"observe": True}, {"action": np.asarray(action, np.float32)})
        self._fresh = self._observation(reply)

    def get_observation(self) -> RobotObservation:
        """The observation taken right after the last command (once), else a fresh one from the server."""
        fresh, self._fresh = self._fresh, None
        return fresh if fresh is not None else self._observation(self._request(OBSERVE))

    def server_stats(self) -> dict[str, Any]:
        """The server's counters (commands, rejections, watchdog holds, lost clients, ...) and step latency."""
        return self._request(STATS).fields["stats"]

    @property
    def server_alive(self) -> bool:
        """Whether the server's state heartbeat arrived within its watchdog period."""
        watchdog_s = float(self.robot_info.get("watchdog_s", DEFAULT_WATCHDOG_S))
        return time.monotonic() - self._server_seen < watchdog_s

    # ------------------------------------------------------------------ wire
    def _dealer(self) -> zmq.Socket:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections: no stale command runs after a reconnect
        return self._secure(sock)

    def _secure(self, sock: zmq.Socket) -> zmq.Socket:
        """`sock` as a CURVE client of the server (unchanged when insecure)."""
        if self.keys is not None:
            sock.curve_serverkey = self.keys.server_public
            sock.curve_publickey = self.keys.client_public
            sock.curve_secretkey = self.keys.client_secret
        return sock

    def _request(self, kind: str, fields: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
                 timeout_s: float | None = None, resumed: bool = False) -> Payload:
        if self._socket is None:
            raise BridgeError(f"BridgeRobot({self.endpoint}) is not connected; call connect() first")
        self._next_id += 1
        request_id = self._next_id
        frames = encode(Payload(kind, {SESSION_FIELD: self.session, "id": request_id, **(fields or {})}, arrays or {}))
        deadline = time.monotonic() + (timeout_s or self.request_timeout_s)
        self._send(kind, frames, deadline)
        while (remaining := deadline - time.monotonic()) > 0:
            events = dict(self._poller.poll(remaining * 1000))
            self._check_handshake()
            if self._socket not in events:
                continue
            try:
                reply = decode(self._socket.recv_multipart(copy=False))
            except CodecError as exc:
                raise BridgeError(f"robot server {self.endpoint}: undecodable reply to {kind}: {exc}") from exc
            if reply.fields.get("id") != request_id:
                continue  # the late reply to a request that already timed out
            if reply.fields.get("ok"):
                return reply
            field = reply.fields.get("field")
            if field == SESSION_FIELD and kind != HELLO and not resumed:
                self._resume()
                return self._request(kind, fields, arrays, timeout_s, resumed=True)
            message = f"robot server {self.endpoint} refused {kind}: {reply.fields.get('error')}"
            raise CommandRejected(message, field) if kind == COMMAND and field else BridgeError(message)
        raise BridgeTimeout(self._timeout_message(kind, timeout_s or self.request_timeout_s))

    def _resume(self) -> None:
        """Take control again after the server dropped this client for silence (the robot was held meanwhile),
        unless another client has it or the server restarted (then its episode state is gone: an error)."""
        info = self._request(HELLO, {"version": PROTOCOL_VERSION}, resumed=True).fields["robot"]
        restarted = info["server_id"] != self.robot_info["server_id"]
        self.robot_info = info
        if restarted:
            raise BridgeError(f"robot server {self.endpoint} restarted since this client connected: its episode "
                              "state is gone; reset before commanding")
        log.warning("robot server %s had dropped this client (silent over %s s); resumed control", self.endpoint,
                    info["client_timeout_s"])

    def _send(self, kind: str, frames: list, deadline: float) -> None:
        """Send once a connection is up (IMMEDIATE refuses to queue before), failing fast on a bad handshake."""
        while True:
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                self._check_handshake()
                if time.monotonic() >= deadline:
                    raise BridgeTimeout(self._timeout_message(kind, None)) from None
                time.sleep(SEND_RETRY_S)

    def _check_handshake(self) -> None:
        failure = handshake_failure(self._monitor)
        if failure is not None:
            raise BridgeAuthError(f"robot server {self.endpoint}: {failure}; keys_dir: "
                                  f"{self.keys.authorized_dir.parent if self.keys else 'none (insecure)'}")

    def _timeout_message(self, kind: str, timeout_s: float | None) -> str:
        waited = (f"no reply to {kind} within {timeout_s:.1f} s" if timeout_s
                  else f"could not send {kind}: no connection")
        why = ("the server publishes its state but did not answer (busy, or another client controls the robot)"
               if self.server_alive else "server unreachable: down, not listening there, or blocked on the network")
        return f"robot server {self.endpoint}: {waited}: {why}"

    def _observation(self, reply: Payload) -> RobotObservation:
        return observation_from_payload(reply, time.monotonic_ns())

    def _heartbeat_loop(self, period_s: float) -> None:
        """Ping the server every `period_s` (its watchdog sees a live client) and note its state heartbeats."""
        dealer = self._dealer()
        dealer.connect(self.endpoint)
        sub = self._secure(self._context.socket(zmq.SUB))
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.state_endpoint)
        ping = encode(Payload(HEARTBEAT, {SESSION_FIELD: self.session}))
        next_ping = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    next_ping = now + period_s
                    try:
                        dealer.send_multipart(ping, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # no connection right now; the request channel reports why
                if sub.poll(max(next_ping - now, 0.0) * 1000):
                    while sub.poll(0):
                        sub.recv_multipart()
                    self._server_seen = time.monotonic()
        finally:
            dealer.close()
            sub.close()
