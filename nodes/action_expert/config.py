"""Hyper-parameters of the waypoint-guided point-cloud diffusion action expert.

Defaults follow the DP3 anchor (reference/papers.md §6: horizon 16, 2 observation steps, 8 executed
actions, PointNet 3→64→128→256 → 64, FiLM U-Net with kernel 5 and 8 groups, DDPM 100 steps
squaredcos_cap_v2 predicting the sample, DDIM 10 steps) and the Bridge-Thinking-and-Acting guidance
(noise 0.1). The U-Net (48, 96, 192) is narrower than Simple DP3's [128, 256, 384] so that one 16-step chunk
(encoder + 10 DDIM steps) stays under 50 ms p95 on two CPU cores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: ee position xyz (3) + quaternion wxyz (4) + gripper opening (1), robot base frame
STATE_DIM = 8
#: pd_ee_delta_pose: dx dy dz drx dry drz gripper, each in [-1, 1]
ACTION_DIM = 7
#: look-ahead delta xyz (3) + target-waypoint delta xyz (3) + target rotation vector (3) + gripper cmd (1)
GUIDANCE_DIM = 10


@dataclass
class ActionExpertConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    # --- sequence layout (diffusion_policy / DP3 convention) ---
    horizon: int = 16  # actions predicted per chunk
    n_obs_steps: int = 2  # observations the chunk is conditioned on
    n_action_steps: int = 8  # actions of the chunk that are executed

    # --- observation ---
    n_points: int = 512  # points sampled from the N=1024 cropped cloud
    use_point_cloud: bool = True  # False: stage-1 pre-training, the point feature slot is zeros
    use_guidance: bool = True  # False: the DP3-style baseline (same architecture, guidance slot zeros)
    state_dim: int = STATE_DIM
    guidance_dim: int = GUIDANCE_DIM
    action_dim: int = ACTION_DIM

    # --- encoders (DP3 PointNetEncoderXYZ + create_mlp) ---
    point_mlp_dims: tuple[int, ...] = (64, 128, 256)
    point_feature_dim: int = 64
    state_mlp_dims: tuple[int, ...] = (64, 64)
    guidance_mlp_dims: tuple[int, ...] = (64, 64)

    # --- conditional 1-D U-Net ---
    down_dims: tuple[int, ...] = (48, 96, 192)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128

    # --- diffusion ---
    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    clip_sample: bool = True

    # --- guidance (Bridge Thinking and Acting) ---
    guidance_noise_scale: float = 0.1  # std of Gaussian noise on the normalized guidance, training only
    lookahead_m: float = 0.05  # distance along the dense path from the ee projection to the guidance point
    reach_tolerance_m: float = 0.006  # a waypoint counts as reached this close (demos settle within 4 mm)
    path_resolution_m: float = 0.005  # spacing of the densified B-spline path
    spline_degree: int = 1  # 1 follows the demos' straight screw motions; 3 for smooth free-form plans

    @property
    def global_cond_dim(self) -> int:
        """Per-step point + state + guidance features, concatenated over the observation steps."""
        per_step = self.point_feature_dim + self.state_mlp_dims[-1] + self.guidance_mlp_dims[-1]
        return per_step * self.n_obs_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so a checkpoint loads with `torch.load(weights_only=True)`."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ActionExpertConfig":
        """Inverse of `to_dict`; unknown keys are an error so a stale checkpoint fails loudly."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown ActionExpertConfig fields in checkpoint: {unknown}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    def validate(self) -> None:
        """Catch layouts the U-Net or the sampler cannot serve before training starts."""
        if self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError("n_obs_steps and n_action_steps must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"horizon={self.horizon} is shorter than n_obs_steps-1+n_action_steps="
                f"{self.n_obs_steps - 1 + self.n_action_steps}"
            )
        if self.horizon % (2 ** (len(self.down_dims) - 1)) != 0:
            raise ValueError(f"horizon={self.horizon} must be divisible by 2**(len(down_dims)-1)")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"down_dims {self.down_dims} must be multiples of n_groups={self.n_groups}")
