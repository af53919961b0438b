"""The controller: turns overlapping action chunks into one safe command per robot step.

Chunks from the action expert overlap (a 16-step chunk is re-planned every few steps); the actions
predicted for the same robot step are blended, newest weighted `new_weight` (LeRobot's
`weighted_average` uses 0.7), which smooths the seams between chunks. Each robot state asks for the
command of its step; if no chunk covers it yet, the controller waits for one — at most the actions
watchdog's deadline, then it holds; while the planner's plan is invalid (the `plan` input: the target
is absent or out of view) it holds at once, with the planner's reason. Every command passes
`robot.safety.enforce`: workspace box, per-step translation and rotation, gripper range, NaN/inf
rejection. An engaged e-stop holds until released. None of this can be switched off by params;
params can only make limits tighter. Every clamp and hold is counted in the node's metrics.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import ActionChunk, Command, EStop, RobotState, Waypoints
from pipeline.node import Node
from robot.safety import GRIPPER_INDEX, HARD_LIMITS, SafetyLimits, enforce, hold_action

WATCHDOG_DEADLINE_S = 0.5
FRAME_BASE = "base"
GRIPPER_OPEN = 1.0


class ControllerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_weight: float = Field(0.7, gt=0.0, le=1.0, description="weight of the newest chunk when blending (1 = latest only)")
    workspace_low: tuple[float, float, float] | None = None
    workspace_high: tuple[float, float, float] | None = None
    max_step_m: float | None = None
    max_step_rad: float | None = None


class Controller(Node):
    Params = ControllerParams
    inputs = {"actions": ActionChunk, "state": RobotState, "estop": EStop, "plan": Waypoints}
    outputs = {"command": Command}
    input_timeouts: ClassVar[dict[str, float]] = {"actions": WATCHDOG_DEADLINE_S}

    def setup(self) -> None:
        narrowing = {k: v for k, v in self.params.model_dump().items() if k != "new_weight" and v is not None}
        self.limits: SafetyLimits = HARD_LIMITS.narrowed(**narrowing)
        self.episode = 0  # episodes count from 0; a state of another episode resets the plan
        self.planned: dict[int, np.ndarray] = {}  # robot step -> blended action
        self.waiting: RobotState | None = None  # a state whose command is not out yet
        self.gripper = GRIPPER_OPEN
        self.estop: EStop | None = None
        self.no_plan: tuple[int, str] | None = None  # (episode, the planner's reason) while its plan is invalid

    def on_state(self, msg: RobotState) -> None:
        if msg.episode != self.episode:
            self.episode, self.planned, self.gripper = msg.episode, {}, GRIPPER_OPEN
        if msg.done:  # the episode is over: nothing to command
            self.waiting = None
            return
        self.waiting = msg
        self.planned = {step: a for step, a in self.planned.items() if step >= msg.step}
        self._try_command()

    def on_actions(self, msg: ActionChunk) -> None:
        if msg.episode != self.episode:
            self.count("stale_chunks")
            return
        if not np.all(np.isfinite(msg.actions)):
            self.count("rejected_chunks")
            self.log.error("dropped an action chunk with NaN/inf (seq %d from %s)", msg.seq, msg.stream)
            return
        oldest = self.waiting.step if self.waiting is not None else -1
        for offset, action in enumerate(np.asarray(msg.actions, np.float64)):
            step = msg.start_step + offset
            if step < oldest:
                continue
            previous = self.planned.get(step)
            w = self.params.new_weight
            self.planned[step] = action if previous is None else (1.0 - w) * previous + w * action
        self._try_command()

    def on_estop(self, msg: EStop) -> None:
        self.estop = msg if msg.engaged else None
        if msg.engaged:
            self.log.warning("e-stop engaged: %s", msg.reason or "no reason given")
            self._try_command()

    def on_plan(self, msg: Waypoints) -> None:
        self.no_plan = None if msg.valid else (msg.episode, msg.reason)
        self._try_command()

    def on_timeout(self, port: str) -> None:
        if port == "actions" and self.waiting is not None:
            self._hold("watchdog")

    def _try_command(self) -> None:
        state = self.waiting
        if state is None:
            return
        if self.estop is not None:
            self._hold("estop")
            return
        if self.no_plan is not None and self.no_plan[0] == state.episode:
            self._hold("no_plan", self.no_plan[1])
            return
        action = self.planned.pop(state.step, None)
        if action is None:
            return  # wait for a chunk that covers this step (the watchdog bounds the wait)
        result = enforce(action, np.asarray(state.ee_pose[:3], np.float64), self.limits, self.gripper)
        if result.rejected:
            self._hold("rejected", result.rejected)
            return
        for clamp in result.clamps:
            self.count(f"clamp_{clamp}")
        self.gripper = float(result.action[GRIPPER_INDEX])
        self._send(Command(action=result.action, episode=state.episode, step=state.step, frame_id=FRAME_BASE,
                           stamp_ns=state.stamp_ns))  # the state it answers: a replay reproduces it

    def _hold(self, why: str, detail: str = "") -> None:
        state = self.waiting
        self.count(f"hold_{why}")
        self._send(Command(action=hold_action(self.gripper), hold=True, reason=detail or why,
                           episode=state.episode, step=state.step, frame_id=FRAME_BASE, stamp_ns=state.stamp_ns))

    def _send(self, command: Command) -> None:
        self.waiting = None
        self.emit("command", command)
