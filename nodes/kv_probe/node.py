"""KvProbeGrounder: a camera frame and a referring expression in, the visual-KV probe's mask out.

Zero-shot referring segmentation with no segmentation head: one VLM forward pass per frame, the
chosen layer's image value tokens against the expression's value (nodes/kv_probe/probe.py), the
min–max map thresholded in the image's frame. The expression is a param, fixed for the run. Key
blocking needs calibration images and is left to the benchmark; the text prefix is a param.

Out goes one `Mask` per frame: (1, H, W) bool, scored by the map's mean inside the mask, labelled
with the expression, header frame_id and stamp_ns from the frame. The probe cannot reject, so an
absent target still gets a (wrong) non-empty mask: benchmarks/grounding.py measures how good the
masks are per layer before a graph should rely on one.
"""
from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.kv_probe.probe import DEFAULT_THRESHOLD, KvProbe, probe_maps, threshold_maps
from pipeline.messages import Frame, Mask
from pipeline.node import Node

DEFAULT_MODEL_DIR = "models/vlm_shapes"
LAST_LAYER = -1


class KvProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vlm: str = Field(DEFAULT_MODEL_DIR, min_length=1, description="local Hugging Face VLM directory (LLaVA, Qwen2(.5)-VL)")
    device: str = Field("auto", description="torch device; auto: cuda when available, else cpu")
    expression: str = Field(min_length=1, description="the referring expression, e.g. 'the red circle'")
    layer: int = Field(LAST_LAYER, description="LM layer whose value tokens make the map; negative counts from the last")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0.0, le=1.0, description="of the per-map min–max range")
    prefix: str | None = Field(None, description="text placed before the image (e.g. the expression itself); None: none")


class KvProbeGrounder(Node):
    """Frame → Mask by the visual-KV probe at one layer."""

    Params = KvProbeParams
    inputs = {"frame": Frame}
    outputs = {"mask": Mask}

    def setup(self) -> None:
        from nodes.vlm.hf import HfVlmAdapter

        self.probe = KvProbe(HfVlmAdapter(self.params.vlm, device=self.params.device))
        n_layers = self.probe.n_layers
        if not -n_layers <= self.params.layer < n_layers:
            raise ValueError(f"node {self.node_id}: layer {self.params.layer} is outside the VLM's {n_layers} layers")

    def on_frame(self, msg: Frame) -> None:
        p = self.params
        result = self.probe.run(msg.image, p.expression, prefix=p.prefix)
        heat = probe_maps(result)[p.layer]  # (H, W) in [0, 1]
        mask = threshold_maps(heat, p.threshold)  # (H, W) bool
        score = float(heat[mask].mean()) if bool(mask.any()) else 0.0
        self.count("frames")
        self.emit("mask", Mask(masks=mask.numpy()[None], scores=np.array([score], np.float32),
                               labels=[p.expression], frame_id=msg.frame_id, stamp_ns=msg.stamp_ns))

    def close(self) -> None:
        self.probe = None
