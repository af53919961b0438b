"""The robot bridge, server side: `RobotServer` puts any `Robot` on the network (protocol in
robot/BRIDGE_PROTOCOL.md) and is the robot's last line of defence. Clients are not trusted: every
command is checked against the server's own safety limits (robot/safety.py) and refused, with the
offending field named, if it is malformed, non-finite or out of limits; and the server's own watchdog
holds the robot when commands stop — a crashed client, a cut cable — whatever the client does.

One thread owns the robot and the sockets: requests are handled in arrival order, the watchdog and
the state heartbeat run between them. One client controls the robot at a time.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from robot.bridge import (
    BYE, COMMAND, DEFAULT_CLIENT_TIMEOUT_S, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_HEARTBEAT_S, DEFAULT_WATCHDOG_S,
    HEARTBEAT, HELLO, OBSERVE, PROTOCOL_VERSION, REPLY, REQUESTS, RESET, SESSION_FIELD, STATE, STATE_ARRAYS, STATS,
    BridgeError, bridge_security, handshake_failure, monitor, observation_payload, state_endpoint_for,
)
from robot.interface import Robot, RobotObservation
from robot.safety import GRIPPER_INDEX, HARD_LIMITS, N_ACTION, SafetyLimits, enforce, hold_action
from streaming.codec import CodecError, Payload, decode, encode
from streaming.security import start_authenticator

log = logging.getLogger("groundloop.bridge")

#: control modes robot/safety.py can check, and whose hold is "zero delta, gripper as last commanded"
HOLDABLE_MODES = ("pd_ee_delta_pose",)
#: a command is refused when the limits would change a component by more than this (normalised units);
#: less is float rounding of a client that clamped to the same limits itself
LIMIT_TOLERANCE = 1e-4
POLL_S = 0.02  # the watchdog's resolution
LATENCY_WINDOW = 4096
# counters, reported by `stats` requests and in every state message
COMMANDS, REJECTED, RESETS, HOLDS, WATCHDOG_HOLDS = "commands", "rejected", "resets", "holds", "watchdog_holds"
CLIENTS_LOST, AUTH_FAILURES, ROBOT_ERRORS, MALFORMED = "clients_lost", "auth_failures", "robot_errors", "malformed"
COUNTERS = (COMMANDS, REJECTED, RESETS, HOLDS, WATCHDOG_HOLDS, CLIENTS_LOST, AUTH_FAILURES, ROBOT_ERRORS, MALFORMED)

Handler = Callable[[dict[str, Any], dict[str, np.ndarray]], Payload]


class RequestError(ValueError):
    """A request the server refuses; `field` names the culprit (e.g. "action.dx", "seed", "session")."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class _Session:
    session: str
    last_seen: float  # monotonic: any request or heartbeat


def _limit_text(clamp: str, limits: SafetyLimits) -> str:
    return {"workspace": f"workspace box {limits.workspace_low}..{limits.workspace_high} m",
            "max_step_m": f"max_step_m {limits.max_step_m} m per step",
            "max_step_rad": f"max_step_rad {limits.max_step_rad} rad per step",
            "gripper": f"gripper range {limits.gripper_low}..{limits.gripper_high}"}[clamp]


def check_command(action: np.ndarray, names: tuple[str, ...], ee_position: np.ndarray, limits: SafetyLimits,
                  hold_gripper: float) -> np.ndarray:
    """The action to execute for a received command; RequestError naming the field if it breaks a limit."""
    if action.dtype.kind not in "fiu":
        raise RequestError(f"action has dtype {action.dtype}; expected float32", "action")
    if action.shape != (len(names),):
        raise RequestError(f"action has shape {action.shape}; this robot takes ({len(names)},) {names}", "action")
    values = action.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        field = f"action.{names[bad[0]]}"
        raise RequestError(f"{field} is {values[bad[0]]}: NaN and inf are refused", field)
    result = enforce(values, np.asarray(ee_position, np.float64), limits, hold_gripper)
    if result.rejected:
        raise RequestError(result.rejected, "action")
    over = np.flatnonzero(np.abs(result.action - values) > LIMIT_TOLERANCE)
    if over.size:
        asked = ", ".join(f"{names[i]}={values[i]:+.4f}" for i in over)
        broken = "; ".join(_limit_text(clamp, limits) for clamp in result.clamps)
        raise RequestError(f"action outside the server's limits: {asked} ({broken}); the most it allows here is "
                           f"{np.round(result.action, 4).tolist()}", f"action.{names[over[0]]}")
    return result.action if result.clamps else values.astype(np.float32)


class RobotServer:
    """Serves `robot` on `endpoint` (tcp://HOST:PORT, CURVE unless insecure; or ipc://PATH), state on
    `state_endpoint` (default: the next tcp port, or PATH.state). `serve()` blocks; `start()` threads it."""

    def __init__(self, robot: Robot, endpoint: str, *, keys_dir: str | Path | None = None, insecure: bool = False,
                 state_endpoint: str | None = None, limits: SafetyLimits = HARD_LIMITS,
                 watchdog_s: float = DEFAULT_WATCHDOG_S, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S) -> None:
        if robot.control_mode not in HOLDABLE_MODES or len(robot.action_names) != N_ACTION:
            raise ValueError(f"RobotServer: {type(robot).__name__} has control mode {robot.control_mode!r} with "
                             f"{len(robot.action_names)} action components; the limits and the hold are defined for "
                             f"{HOLDABLE_MODES} with {N_ACTION}")
        if not 0 < heartbeat_s < min(watchdog_s, client_timeout_s):
            raise ValueError(f"RobotServer: need 0 < heartbeat_s ({heartbeat_s}) < watchdog_s ({watchdog_s}) "
                             f"and client_timeout_s ({client_timeout_s})")
        self.robot = robot
        self.keys = bridge_security(endpoint, keys_dir, insecure)
        if self.keys is not None and self.keys.server_secret is None:
            raise ValueError(f"RobotServer: {keys_dir}/server.key_secret is missing: this host cannot serve CURVE")
        self.bind_endpoint, self.bind_state_endpoint = endpoint, state_endpoint or state_endpoint_for(endpoint)
        self.endpoint = self.state_endpoint = ""  # the bound addresses, once serving
        self.limits, self.watchdog_s, self.heartbeat_s = limits, watchdog_s, heartbeat_s
        self.client_timeout_s = client_timeout_s
        self.server_id = secrets.token_hex(8)  # tells a client whether it talks to the server it said hello to
        self.stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self.stop_event = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._controller: _Session | None = None
        self._obs: RobotObservation | None = None
        self._armed = False  # a command ran since the last reset or hold: silence must end in a hold
        self._last_command = 0.0
        self._gripper = 0.0  # the last executed gripper command, which a hold keeps
        self._step_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._handlers: dict[str, Handler] = {HELLO: self._hello, RESET: self._reset, COMMAND: self._command,
                                              OBSERVE: self._observe, STATS: self._stats, BYE: self._bye}

    # ------------------------------------------------------------------ lifecycle
    def serve(self, on_ready: Callable[["RobotServer"], None] | None = None) -> None:
        """Connect the robot, bind, call `on_ready`, answer until `stop_event` is set; then hold the robot
        and release it."""
        context = zmq.Context()
        authenticator = start_authenticator(context, self.keys) if self.keys is not None else None
        try:
            self.robot.connect()
            self._obs = self.robot.get_observation()
            self._bind(context)
            log.info("robot server: %s on %s (state on %s), %s, watchdog %.2f s", type(self.robot).__name__,
                     self.endpoint, self.state_endpoint, "CURVE" if self.keys else "insecure", self.watchdog_s)
            self._ready.set()
            if on_ready is not None:
                on_ready(self)
            self._loop()
        finally:
            try:
                if self._armed:
                    self._hold("server stopping")
            finally:
                if authenticator is not None:
                    authenticator.stop()
                context.destroy(linger=0)
                self.robot.disconnect()

    def start(self, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> "RobotServer":
        """Serve on a background thread; returns once bound, raising if the server failed to start."""
        self._thread = threading.Thread(target=self._serve_in_thread, name="robot-server", daemon=True)
        self._thread.start()
        while not self._ready.wait(0.05):
            if not self._thread.is_alive() or timeout_s <= 0:
                raise BridgeError(f"robot server on {self.bind_endpoint} did not start: {self._error!r}") \
                    from self._error
            timeout_s -= 0.05
        return self

    def stop(self) -> None:
        """Stop a server started with `start()` (holding the robot if it was moving)."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join()

    def _serve_in_thread(self) -> None:
        try:
            self.serve()
        except BaseException as exc:  # reported by start(), or logged when it dies later
            self._error = exc
            log.exception("robot server on %s failed", self.bind_endpoint)

    def _bind(self, context: zmq.Context) -> None:
        self._router = self._secure(context.socket(zmq.ROUTER))
        self._monitor = monitor(self._router)
        self._router.bind(self.bind_endpoint)
        self.endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pub = self._secure(context.socket(zmq.PUB))
        self._pub.bind(self.bind_state_endpoint)
        self.state_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _secure(self, sock: zmq.Socket) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.keys.server_secret
        return sock

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        next_beat = 0.0
        while not self.stop_event.is_set():
            events = dict(self._poller.poll(min(max(next_beat - time.monotonic(), 0.0), POLL_S) * 1000))
            if self._monitor in events:
                self._note_handshakes()
            if self._router in events:
                self._drain()
            now = time.monotonic()
            self._watch(now)
            if now >= next_beat:
                self._publish()
                next_beat = now + self.heartbeat_s

    def _drain(self) -> None:
        while True:
            try:
                identity, *frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            reply = self._handle(frames)
            if reply is not None:
                self._router.send_multipart([identity, *encode(reply)], copy=False)

    def _handle(self, frames: list) -> Payload | None:
        try:
            request = decode(frames)
        except CodecError as exc:
            self.stats[MALFORMED] += 1
            return Payload(REPLY, {"id": None, "ok": False, "error": f"malformed request: {exc}", "field": ""})
        kind, fields = request.type_name, request.fields
        session, controller = fields.get(SESSION_FIELD), self._controller
        if controller is not None and session == controller.session:
            controller.last_seen = time.monotonic()
        if kind == HEARTBEAT:
            return None
        try:
            if kind not in self._handlers:
                raise RequestError(f"unknown request type {kind!r}; this server speaks {', '.join(REQUESTS)}", "type")
            if kind not in (HELLO, STATS) and (controller is None or session != controller.session):
                raise RequestError(f"{kind} from session {session!r}, which does not control the robot: "
                                   "say hello first", SESSION_FIELD)
            reply = self._handlers[kind](fields, request.arrays)
        except RequestError as exc:
            if kind == COMMAND:
                self.stats[REJECTED] += 1
                log.warning("robot server %s: command refused: %s", self.endpoint, exc)
            return Payload(REPLY, {"id": fields.get("id"), "ok": False, "error": str(exc), "field": exc.field})
        except Exception as exc:  # the robot itself failed: the client hears why, the server goes on
            self.stats[ROBOT_ERRORS] += 1
            log.exception("robot server %s: the robot failed during %s", self.endpoint, kind)
            return Payload(REPLY, {"id": fields.get("id"), "ok": False, "field": "",
                                   "error": f"robot error during {kind}: {type(exc).__name__}: {exc}"})
        reply.fields.update(id=fields.get("id"), ok=True)
        return reply

    def _watch(self, now: float) -> None:
        """The watchdog: hold a robot whose commands stopped; free the robot from a client gone silent (a
        longer wait: a live client's heartbeat may stall while it loads a model, and freeing moves nothing)."""
        if self._armed and now - self._last_command > self.watchdog_s:
            self.stats[WATCHDOG_HOLDS] += 1
            self._hold(f"watchdog: no command for {now - self._last_command:.2f} s (limit {self.watchdog_s} s)",
                       logging.WARNING)
        controller = self._controller
        if controller is not None and now - controller.last_seen > self.client_timeout_s:
            self.stats[CLIENTS_LOST] += 1
            self._controller = None
            log.warning("robot server %s: client %s lost: no command or heartbeat for %.2f s; the robot is free for "
                        "the next hello", self.endpoint, controller.session, now - controller.last_seen)

    def _hold(self, reason: str, level: int = logging.INFO) -> None:
        """Keep the robot still (zero delta, the gripper as last commanded) until the next command."""
        self.robot.send_action(hold_action(self._gripper))
        self._armed = False
        self.stats[HOLDS] += 1
        self._obs = self.robot.get_observation()
        log.log(level, "robot server %s: holding the robot: %s", self.endpoint, reason)
        self._publish()

    def _note_handshakes(self) -> None:
        while (failure := handshake_failure(self._monitor)) is not None:
            self.stats[AUTH_FAILURES] += 1
            log.warning("robot server %s: refused a connection: %s", self.endpoint, failure)

    def _publish(self) -> None:
        """The state heartbeat: the last observation's robot state, whether it is held, the counters."""
        obs = self._obs
        fields = {"age_ns": time.monotonic_ns() - obs.stamp_ns, "gripper": float(obs.gripper), "held": not self._armed,
                  "controlled": self._controller is not None, "stats": dict(self.stats)}
        self._pub.send_multipart(encode(Payload(STATE, fields, {n: np.asarray(getattr(obs, n)) for n in STATE_ARRAYS})))

    # ------------------------------------------------------------------ requests
    def _hello(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        if fields.get("version") != PROTOCOL_VERSION:
            raise RequestError(f"protocol version {fields.get('version')!r}; this server speaks {PROTOCOL_VERSION}",
                               "version")
        session, controller = fields.get(SESSION_FIELD), self._controller
        if not isinstance(session, str) or not session:
            raise RequestError("hello without a session id", SESSION_FIELD)
        if controller is not None and controller.session != session:
            raise RequestError(f"the robot is controlled by another client (session {controller.session}); it is "
                               f"freed by that client's bye or after {self.client_timeout_s} s of its silence",
                               SESSION_FIELD)
        self._controller = _Session(session, time.monotonic())
        info = {"version": PROTOCOL_VERSION, "action_names": list(self.robot.action_names),
                "control_mode": self.robot.control_mode, "watchdog_s": self.watchdog_s, "heartbeat_s": self.heartbeat_s,
                "client_timeout_s": self.client_timeout_s, "server_id": self.server_id,
                "limits": asdict(self.limits), "secure": self.keys is not None}
        return Payload(REPLY, {"robot": info})

    def _reset(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        seed = fields.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise RequestError(f"seed {seed!r} is not an integer", "seed")
        self._obs = self.robot.reset(seed=seed)
        self._armed = False
        self.stats[RESETS] += 1
        self._publish()
        return observation_payload(self._obs, REPLY, {})

    def _command(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        started = time.monotonic()
        if "action" not in arrays:
            raise RequestError("command without an 'action' array", "action")
        action = check_command(arrays["action"], tuple(self.robot.action_names), self._obs.ee_pose[:3], self.limits,
                               self._gripper)
        self.robot.send_action(action)
        self._armed, self._last_command = True, time.monotonic()
        self._gripper = float(action[GRIPPER_INDEX])
        self.stats[COMMANDS] += 1
        self._obs = self.robot.get_observation()
        self._step_s.append(time.monotonic() - started)
        self._publish()
        return observation_payload(self._obs, REPLY, {}) if fields.get("observe") else Payload(REPLY)

    def _observe(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        self._obs = self.robot.get_observation()
        return observation_payload(self._obs, REPLY, {})

    def _stats(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        p50, p95 = (np.percentile(self._step_s, [50, 95]) * 1000.0).tolist() if self._step_s else (None, None)
        stats = {**self.stats, "step_ms": {"p50": p50, "p95": p95, "n": len(self._step_s)},
                 "held": not self._armed, "controlled": self._controller is not None}
        return Payload(REPLY, {"stats": stats})

    def _bye(self, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> Payload:
        if self._armed:
            self._hold("the client said bye")
        self._controller = None
        return Payload(REPLY)
