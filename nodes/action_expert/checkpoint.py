"""The shipped inference checkpoint: one small `.pt` holding config, normalizer and (EMA) weights.

Weights are stored in float16 (half the size; the expert ships inside the repo) and widened back to
float32 on load. Only plain tensors and builtins go in, so loading uses `torch.load(weights_only=True)`.
The resumable training state (optimizer, raw weights, EMA shadow) lives in a separate file written
by train.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodes.action_expert.config import ActionExpertConfig
from nodes.action_expert.model import ActionExpertPolicy
from nodes.action_expert.normalizer import LinearNormalizer
from nodes.model_dir import atomic_torch_save, resolve_device

CHECKPOINT_FORMAT = "groundloop.action_expert/1"
TRAIN_COMMAND = "groundloop train action-expert --data data/demos/PickCube-v1 --out {path}"


class MissingCheckpointError(FileNotFoundError):
    """No checkpoint at the configured path."""


def save_policy(policy: ActionExpertPolicy, path: Path, *, meta: dict[str, Any]) -> None:
    """Save the policy's current weights (call it with the EMA weights swapped in)."""
    weights = {
        name: (t.detach().half() if t.is_floating_point() else t.detach()).cpu()
        for name, t in policy.state_dict().items()
        if not name.startswith("normalizer.")
    }
    normalizer = {name: t.detach().cpu() for name, t in policy.normalizer.state_dict().items()}
    atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": policy.config.to_dict(),
            "normalizer": normalizer,
            "weights": weights,
            "meta": meta,
        },
        path,
    )


def load_policy_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[ActionExpertPolicy, dict[str, Any]]:
    """Rebuild the policy (eval mode, on `device`) and return it with the checkpoint's meta."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(
            f"no action-expert checkpoint at {path}; train one with `{TRAIN_COMMAND.format(path=path)}`"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an action-expert checkpoint (format {CHECKPOINT_FORMAT!r}); "
            "a resumable training state cannot be loaded for inference"
        )
    config = ActionExpertConfig.from_dict(ckpt["config"])
    normalizer = LinearNormalizer.from_state_dict(ckpt["normalizer"])
    policy = ActionExpertPolicy(config, normalizer)
    state = {name: t.float() if t.is_floating_point() else t for name, t in ckpt["weights"].items()}
    state.update({f"normalizer.{name}": t for name, t in ckpt["normalizer"].items()})
    policy.load_state_dict(state)
    device = resolve_device(device) if isinstance(device, str) else device
    return policy.to(device).eval(), ckpt["meta"]
