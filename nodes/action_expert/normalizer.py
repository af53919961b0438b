"""Per-field linear normalization (diffusion_policy's LinearNormalizer, cut down to what the expert uses).

Why: the diffusion model works in [-1, 1] (clip_sample), and the state, guidance, points and actions
have very different ranges. The statistics are fitted once on the training demos and travel inside
the checkpoint, so inference normalizes exactly as training did.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

_MODES = ("limits", "gaussian")


class _FieldNormalizer(nn.Module):
    """y = x * scale + offset on the last dimension; buffers so they follow `.to(device)` and stay out of the optimizer."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("offset", offset.float())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.offset) / self.scale


class LinearNormalizer(nn.Module):
    """A named set of per-dimension affine maps, e.g. {"state": 8 dims, "action": 7 dims}."""

    def __init__(self) -> None:
        super().__init__()
        self.fields = nn.ModuleDict()

    def fit(
        self,
        data: Mapping[str, np.ndarray | torch.Tensor],
        *,
        mode: str = "limits",
        range_eps: float = 1e-4,
    ) -> "LinearNormalizer":
        """Fit each field on all its samples, flattened to (-1, D).

        limits: min/max → [-1, 1]; a dimension whose range is below `range_eps` is only centred (scale 1),
        so a constant channel does not blow up. gaussian: zero mean, unit std.
        """
        if mode not in _MODES:
            raise ValueError(f"normalizer mode must be one of {_MODES}, got {mode!r}")
        for key, values in data.items():
            x = torch.as_tensor(np.asarray(values), dtype=torch.float64)
            x = x.reshape(-1, x.shape[-1])  # (S, D)
            if x.shape[0] == 0:
                raise ValueError(f"cannot fit normalizer field {key!r} on zero samples")
            if mode == "limits":
                lo, hi = x.min(dim=0).values, x.max(dim=0).values
                span = hi - lo
                flat = span < range_eps
                span[flat] = 2.0
                scale = 2.0 / span
                offset = -1.0 - lo * scale
                offset[flat] = -(lo[flat] + hi[flat]) / 2.0
            else:
                mean, std = x.mean(dim=0), x.std(dim=0)
                std[std < range_eps] = 1.0
                scale = 1.0 / std
                offset = -mean * scale
            self.fields[key] = _FieldNormalizer(scale, offset)
        return self

    def keys(self) -> list[str]:
        return list(self.fields.keys())

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self._field(key).normalize(x)

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        return self._field(key).unnormalize(y)

    def _field(self, key: str) -> _FieldNormalizer:
        if key not in self.fields:
            raise KeyError(f"normalizer has no field {key!r} (fitted: {self.keys()})")
        return self.fields[key]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "LinearNormalizer":
        """Rebuild from `state_dict()` alone (keys `fields.<name>.scale|offset`), as stored in a checkpoint."""
        normalizer = cls()
        names = sorted({k.split(".")[1] for k in state if k.startswith("fields.")})
        for name in names:
            normalizer.fields[name] = _FieldNormalizer(state[f"fields.{name}.scale"], state[f"fields.{name}.offset"])
        return normalizer
