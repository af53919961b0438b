"""The action expert's network: DP3 point encoder + state/guidance MLPs → FiLM-conditioned 1-D temporal U-Net.

Layout follows DP3 (`pointnet_extractor.py`, `conditional_unet1d.py`) and diffusion_policy: each of the
n_obs_steps observations becomes [point 64 | state 64 | guidance 64]; the steps are concatenated into
the global condition, which — with the diffusion-step embedding — scales and shifts every residual
block of the U-Net (FiLM). Disabled inputs (no point cloud in stage 1, no guidance for the baseline)
keep their slot filled with zeros, so stage-1 weights load unchanged into stage 2 and the baseline
has the same architecture.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.guidance import perturb_guidance
from nodes.action_expert.normalizer import LinearNormalizer


def _mlp(in_dim: int, dims: tuple[int, ...]) -> nn.Sequential:
    """DP3's create_mlp: Linear-ReLU between layers, no activation after the last."""
    layers: list[nn.Module] = []
    for i, out_dim in enumerate(dims):
        layers.append(nn.Linear(in_dim, out_dim))
        if i < len(dims) - 1:
            layers.append(nn.ReLU())
        in_dim = out_dim
    return nn.Sequential(*layers)


class PointNetEncoderXYZ(nn.Module):
    """DP3's encoder: per-point MLP with LayerNorm+ReLU, max-pool over points, projection + LayerNorm."""

    def __init__(self, mlp_dims: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_dim = 3
        for dim in mlp_dims:
            layers += [nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.ReLU()]
            in_dim = dim
        self.mlp = nn.Sequential(*layers)
        self.projection = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    @torch.no_grad()
    def silence(self) -> None:
        """Zero the final LayerNorm's affine, so the encoder outputs zeros until training moves it.

        Stage 2 starts from a network that saw zeros in the point slot; a silenced encoder keeps its
        actions unchanged at the first step (ControlNet's zero-initialised branch) instead of
        perturbing them with random features.
        """
        norm = self.projection[1]
        norm.weight.zero_()
        norm.bias.zero_()

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = self.mlp(points)  # (B, P, C)
        x = x.max(dim=-2).values  # (B, C)
        return self.projection(x)  # (B, out_dim)


class ObservationEncoder(nn.Module):
    """Encodes the observation window into the U-Net's global condition."""

    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.config = config
        self.point_encoder = PointNetEncoderXYZ(config.point_mlp_dims, config.point_feature_dim)
        self.state_mlp = _mlp(config.state_dim, config.state_mlp_dims)
        self.guidance_mlp = _mlp(config.guidance_dim, config.guidance_mlp_dims)

    def forward(
        self, points: torch.Tensor | None, state: torch.Tensor, guidance: torch.Tensor
    ) -> torch.Tensor:
        """points (B, To, P, 3) or None, state (B, To, Ds), guidance (B, To, Dg) → (B, To * F)."""
        B, To = state.shape[:2]
        cfg = self.config
        if cfg.use_point_cloud:
            if points is None:
                raise ValueError("this expert uses point clouds but the batch has no 'points'")
            point_feat = self.point_encoder(points.flatten(0, 1)).view(B, To, -1)  # (B, To, 64)
        else:
            point_feat = state.new_zeros(B, To, cfg.point_feature_dim)
        state_feat = self.state_mlp(state)  # (B, To, 64)
        if cfg.use_guidance:
            guidance_feat = self.guidance_mlp(guidance)  # (B, To, 64)
        else:
            guidance_feat = state.new_zeros(B, To, cfg.guidance_mlp_dims[-1])
        return torch.cat([point_feat, state_feat, guidance_feat], dim=-1).flatten(1)  # (B, To * F)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]  # (B, half)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, dim)


class Conv1dBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias applied between them (FiLM)."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.out_ch = out_ch
        self.block1 = Conv1dBlock(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_ch * 2))
        self.residual_conv = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.block1(x)  # (B, C, T)
        scale, bias = self.cond_encoder(cond).view(-1, 2, self.out_ch, 1).unbind(dim=1)  # (B, C, 1) each
        out = self.block2(scale * out + bias)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """diffusion_policy's ConditionalUnet1D with global conditioning only."""

    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        dims = [config.action_dim, *config.down_dims]
        k, g, dsed = config.kernel_size, config.n_groups, config.diffusion_step_embed_dim
        cond_dim = dsed + config.global_cond_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        in_out = list(zip(dims[:-1], dims[1:]))
        self.down_modules = nn.ModuleList()
        for i, (din, dout) in enumerate(in_out):
            is_last = i == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(din, dout, cond_dim, k, g),
                ConditionalResidualBlock1D(dout, dout, cond_dim, k, g),
                nn.Conv1d(dout, dout, 3, stride=2, padding=1) if not is_last else nn.Identity(),
            ]))
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([
            ConditionalResidualBlock1D(mid, mid, cond_dim, k, g),
            ConditionalResidualBlock1D(mid, mid, cond_dim, k, g),
        ])
        self.up_modules = nn.ModuleList()
        for din, dout in reversed(in_out[1:]):  # every up level undoes one down-sampling
            self.up_modules.append(nn.ModuleList([
                ConditionalResidualBlock1D(dout * 2, din, cond_dim, k, g),
                ConditionalResidualBlock1D(din, din, cond_dim, k, g),
                nn.ConvTranspose1d(din, din, 4, stride=2, padding=1),
            ]))
        self.final_conv = nn.Sequential(Conv1dBlock(dims[1], dims[1], k, g), nn.Conv1d(dims[1], config.action_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """sample (B, H, Da), timestep (B,), global_cond (B, G) → (B, H, Da)."""
        cond = torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)  # (B, dsed + G)
        x = sample.transpose(1, 2)  # (B, Da, H)
        skips = []
        for res1, res2, downsample in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for res1, res2, upsample in self.up_modules:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)  # (B, H, Da)


class ActionExpertPolicy(nn.Module):
    """Normalizer + observation encoder + U-Net + schedulers: the whole expert, in raw units at its edges.

    Batches are dicts: "state" (B, To, 8), "guidance" (B, To, 10), "points" (B, To, P, 3) when the
    expert uses point clouds, and "action" (B, H, 7) for training.
    """

    def __init__(self, config: ActionExpertConfig, normalizer: LinearNormalizer) -> None:
        super().__init__()
        config.validate()
        if config.prediction_type not in ("sample", "epsilon"):
            raise ValueError(f"prediction_type must be 'sample' or 'epsilon', got {config.prediction_type!r}")
        self.config = config
        self.normalizer = normalizer
        self.obs_encoder = ObservationEncoder(config)
        self.unet = ConditionalUnet1D(config)
        scheduler_kwargs = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample,
            prediction_type=config.prediction_type,
        )
        self.train_scheduler = DDPMScheduler(**scheduler_kwargs)
        self.inference_scheduler = DDIMScheduler(**scheduler_kwargs)
        self.inference_scheduler.set_timesteps(config.num_inference_steps)

    def _global_cond(self, batch: dict[str, torch.Tensor], *, noisy_guidance: bool) -> torch.Tensor:
        cfg = self.config
        state = self.normalizer.normalize("state", batch["state"][:, : cfg.n_obs_steps])
        guidance = self.normalizer.normalize("guidance", batch["guidance"][:, : cfg.n_obs_steps])
        if noisy_guidance:
            guidance = perturb_guidance(guidance, cfg.guidance_noise_scale)
        points = None
        if cfg.use_point_cloud:
            points = self.normalizer.normalize("points", batch["points"][:, : cfg.n_obs_steps])
        return self.obs_encoder(points, state, guidance)  # (B, G)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Denoising loss on one batch; guidance noise is added here, at training time only."""
        global_cond = self._global_cond(batch, noisy_guidance=True)
        actions = self.normalizer.normalize("action", batch["action"])  # (B, H, Da)
        noise = torch.randn_like(actions)
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device
        )
        noisy = self.train_scheduler.add_noise(actions, noise, timesteps)
        pred = self.unet(noisy, timesteps, global_cond)
        target = actions if self.config.prediction_type == "sample" else noise
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def predict_action(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample a chunk with DDIM and return the executed part, (B, n_action_steps, Da), in action units."""
        cfg = self.config
        global_cond = self._global_cond(obs, noisy_guidance=False)
        B = global_cond.shape[0]
        trajectory = torch.randn(
            (B, cfg.horizon, cfg.action_dim), generator=generator, device=global_cond.device
        )  # (B, H, Da)
        scheduler = self.inference_scheduler
        for t in scheduler.timesteps:
            timestep = torch.full((B,), int(t), device=global_cond.device, dtype=torch.long)
            model_output = self.unet(trajectory, timestep, global_cond)
            trajectory = scheduler.step(model_output, t, trajectory, generator=generator).prev_sample
        actions = self.normalizer.unnormalize("action", trajectory)  # (B, H, Da)
        start = cfg.n_obs_steps - 1
        return actions[:, start : start + cfg.n_action_steps]
