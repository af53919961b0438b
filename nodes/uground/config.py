"""Hyper-parameters of UGround on the shapes world: the VLM and SAM sizes, the layer policy's modes and the
loss weights, all explicit keywords with the paper's defaults (reference/papers.md §2).

From the paper and its code (rui-qian/UGround, `model/UGround.py`, `model/PPM.py`, `tools/simi_loss.py`):
- modes: 1 always the last layer (deterministic; also what every released eval script uses at test time,
  `--eval_legacy`), 2 the policy's layer for the similarity map and the last layer for SAM's sparse prompt,
  3 the policy's layer for both (the refer_seg / grefer_seg / 13B scripts train with mode 3);
- the policy: logits ⟨h_seg^(l) (detached), w_l⟩ with W ∈ R^{L×D} initialised to ones, a categorical per
  [SEG], REINFORCE with reward −(Gaussian BCE + Gaussian Dice) of the similarity map and an EMA baseline
  b ← 0.9·b + 0.1·r, updated before the advantage r − b is taken;
- losses: ce 1.0 and bce 2.0 (LISA's `train_ds.py` defaults the scripts keep), dice 4 (`--dice_loss_weight=4`
  in the scripts), the similarity-map loss against the ground truth smoothed by a normalised Gaussian of
  kernel 31 and σ 7 (reflect padding, each map max-normalised to 1), added into the mask BCE / Dice terms;
  total = ce + mask + 0.4·policy (papers.md §2 at commit 19e3d71; later commits use 0.2).
- one [SEG] per expression; an empty target answers [REJ] and has no mask (gRefCOCO's rule).
NOT IN THE PAPER: `pointing_weight` (1.0 here, 0 for the paper's losses exactly), a softmax-over-image-tokens
loss on the [SEG] state's scores, without which our small VLM's map never told one shape from another (losses.py).

Sizes: the LLaVA-style VLM is `nodes.shapes_vlm`'s (our CLIP's vision tower, frozen, a projector and a small
Llama), here 4 layers × 128 so that L = 5 hidden states (the embeddings and each layer) are there to choose
from (the shipped model starts from models/vlm_shapes instead, 6 × 192, L = 7: `train --init-vlm`); the SAM is
`nodes.sam`'s small one on 128 px stills, in 16 px patches (see `default_sam`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nodes.sam.config import SamShapesConfig
from nodes.shapes_vlm.config import VlmShapesConfig

DEFAULT_MODEL_DIR = "models/uground_shapes"
#: which hidden layer feeds the similarity map and which feeds SAM's sparse prompt
MODE_LAST, MODE_POLICY_MAP, MODE_POLICY = 1, 2, 3
MODES = (MODE_LAST, MODE_POLICY_MAP, MODE_POLICY)
#: the REINFORCE reward: one figure for the batch (the paper: the summed loss, detached) or one per [SEG]
REWARD_BATCH, REWARD_SAMPLE = "batch", "sample"
REWARDS = (REWARD_BATCH, REWARD_SAMPLE)


def default_vlm() -> VlmShapesConfig:
    """The shapes-world VLM's language model, with room for a 36-token image and a short expression."""
    return VlmShapesConfig(hidden_size=128, layers=4, heads=4, kv_heads=4, max_positions=256)


def default_sam() -> SamShapesConfig:
    """`nodes.sam`'s small SAM in 16 px patches: E = 8, 32×32 mask prompts and low-res masks. Its image encoder
    trains from scratch here, and 8 px patches (E = 16) cost 7× the time per step on these CPUs."""
    return SamShapesConfig(patch_size=16)


@dataclass
class UGroundConfig:
    """Everything needed to rebuild the network and its losses; stored beside the weights."""

    vlm: VlmShapesConfig = field(default_factory=default_vlm)
    sam: SamShapesConfig = field(default_factory=default_sam)
    mode: int = MODE_POLICY  # training: which layers feed SAM (MODES)
    eval_mode: int = MODE_LAST  # inference: the paper's `eval_legacy` uses the last layer
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 4.0
    policy_weight: float = 0.4
    pointing_weight: float = 1.0  # NOT IN THE PAPER (0 there): the softmax-over-tokens loss, see losses.py
    similarity_kernel: int = 31  # Gaussian smoothing of the ground truth for the similarity-map loss
    similarity_sigma: float = 7.0
    ema_decay: float = 0.9  # the REINFORCE baseline
    reward: str = REWARD_BATCH
    policy_init: float = 1.0  # W starts as ones: every layer's logit is the sum of its [SEG] state

    @property
    def num_layers(self) -> int:
        """L: the embeddings and the output of every language-model layer (the paper's 33 for a 32-layer 7B)."""
        return self.vlm.layers + 1

    def validate(self) -> None:
        """Catch a bad setting at construction, naming it."""
        problems = []
        for name in ("mode", "eval_mode"):
            if getattr(self, name) not in MODES:
                problems.append(f"{name} {getattr(self, name)} is not one of {MODES}")
        if self.reward not in REWARDS:
            problems.append(f"reward {self.reward!r} is not one of {REWARDS}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay {self.ema_decay} must lie in [0, 1)")
        if self.similarity_kernel < 1 or self.similarity_sigma <= 0:
            problems.append(f"similarity kernel {self.similarity_kernel} / sigma {self.similarity_sigma} "
                            "must be positive")
        if min(self.ce_weight, self.bce_weight, self.dice_weight, self.policy_weight, self.pointing_weight) < 0:
            problems.append("loss weights must not be negative")
        if problems:
            raise ValueError("UGroundConfig: " + "; ".join(problems))
        self.vlm.validate()
        self.sam.validate()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "vlm": self.vlm.to_dict(), "sam": self.sam.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UGroundConfig":
        """Inverse of `to_dict`; unknown keys are an error, so a stale checkpoint fails loudly."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown UGroundConfig fields: {unknown}")
        nested = {"vlm": VlmShapesConfig.from_dict(data["vlm"]), "sam": SamShapesConfig.from_dict(data["sam"])}
        return cls(**{**data, **nested})
