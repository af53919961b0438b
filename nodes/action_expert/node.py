"""The action expert as a node: (point cloud, robot state, waypoints) of one robot step in → an action
chunk for the steps from there on out.

The cloud and the state of a step may arrive in either order; the expert acts once it has both (and
waypoints, if it is a guided expert), once per step. Waypoints marked invalid by the planner mean no
motion: the expert sends nothing and the controller's watchdog holds the robot. Inputs with NaN/inf
are refused by name and counted, never turned into motion.

`checkpoint: {serve: NAME}` samples the chunks on a running action-expert deployment (nodes/serving)
instead of a model loaded here; the episode state (observation window, waypoint progress) stays in
the node. Sampling noise then comes from a seed drawn per call, so chunks differ from a local run's.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.serving.config import ServeRef
from pipeline.messages import ActionChunk, PointCloud, RobotState, Waypoints
from pipeline.node import Node

CONTROL_PERIOD_NS = 50_000_000  # ManiSkill's control rate: 20 Hz


class ActionExpertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str | ServeRef = Field(description="a checkpoint written by `groundloop train action-expert`, or "
                                                    "{serve: NAME}: a running deployment")
    device: str = "auto"
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    seed: int = 0
    act_every: int = Field(1, ge=1, description="sample a new chunk every this many steps (1: every step, blended "
                                                 "by the controller; n_action_steps: DP3's open-loop chunks)")
    control_mode: str = "pd_ee_delta_pose"


class ActionExpert(Node):
    Params = ActionExpertParams
    inputs = {"cloud": PointCloud, "state": RobotState, "waypoints": Waypoints}
    outputs = {"actions": ActionChunk}

    def setup(self) -> None:
        import torch  # here, not at import: loading a graph should not cost a torch import

        from nodes.action_expert.policy_runtime import ActionExpertRuntime, load_policy

        if self.params.num_threads is not None:
            torch.set_num_threads(self.params.num_threads)
        if isinstance(self.params.checkpoint, ServeRef):
            from nodes.serving.client import ServedPolicy

            policy = ServedPolicy(self.params.checkpoint, on_retry=lambda: self.count("serve_retries"))
            self.runtime = ActionExpertRuntime(policy, seed=self.params.seed)
        else:
            self.runtime = load_policy(self.params.checkpoint, device=self.params.device, seed=self.params.seed)
        self.guided = self.runtime.config.use_guidance
        if self.params.act_every > self.runtime.config.n_action_steps:
            raise ValueError(f"act_every={self.params.act_every} leaves steps no chunk covers: this checkpoint "
                             f"executes n_action_steps={self.runtime.config.n_action_steps}")
        self.episode = 0
        self.state: RobotState | None = None
        self.cloud: PointCloud | None = None
        self.have_waypoints = False
        self.plan_valid = True
        self.acted_step = -1
        self.observed_step = -1

    def _new_episode(self, episode: int) -> None:
        if episode != self.episode:
            self.episode, self.state, self.cloud = episode, None, None
            self.have_waypoints, self.plan_valid, self.acted_step, self.observed_step = False, True, -1, -1
            self.runtime.reset()

    def on_state(self, msg: RobotState) -> None:
        self._new_episode(msg.episode)
        self.state = msg
        self._maybe_act()

    def on_cloud(self, msg: PointCloud) -> None:
        self._new_episode(msg.episode)
        self.cloud = msg
        self._maybe_act()

    def on_waypoints(self, msg: Waypoints) -> None:
        self._new_episode(msg.episode)
        if not msg.valid:
            self.plan_valid = False
            self.count("invalid_plans")
            self.log.warning("planner sent no valid waypoints (%s): holding", msg.reason)
            return
        try:
            self.runtime.set_waypoints(msg.poses, msg.T_base_frame)
        except ValueError as exc:
            self.plan_valid = False
            self.count("rejected_plans")
            self.log.error("refused waypoints from %s: %s", msg.stream, exc)
            return
        self.plan_valid, self.have_waypoints = True, True
        self._maybe_act()

    def _maybe_act(self) -> None:
        state, cloud = self.state, self.cloud
        if state is None or cloud is None or state.step != cloud.step or state.step == self.acted_step or state.done:
            return
        if self.guided and not (self.have_waypoints and self.plan_valid):
            return
        try:
            if state.step != self.observed_step:
                self.runtime.observe(ee_pose=state.ee_pose, gripper=state.gripper, cloud_xyz=cloud.xyz,
                                     T_base_camera=cloud.T_base_frame)
                self.observed_step = state.step
            if self.acted_step >= 0 and state.step - self.acted_step < self.params.act_every:
                return  # the last chunk still covers this step
            actions = self.runtime.predict()
        except ValueError as exc:
            self.count("rejected_observations")
            self.log.error("step %d: refused the observation: %s", state.step, exc)
            return
        self.acted_step = state.step
        self.log.debug("step %d: heading for waypoint %s, first action %s", state.step, self.runtime.target_index,
                       np.round(actions[0], 3))
        stamps = state.stamp_ns + CONTROL_PERIOD_NS * np.arange(len(actions), dtype=np.int64)
        self.emit("actions", ActionChunk(actions=actions, stamps_ns=stamps, start_step=state.step, episode=state.episode,
                                         control_mode=self.params.control_mode, frame_id="base",
                                         stamp_ns=state.stamp_ns))  # the capture time of what it answers
