"""KvProbeGrounder through the node harness, on tiny random-weight VLMs: one mask per frame in its geometry."""
from __future__ import annotations

from pathlib import Path

import pytest

from nodes.kv_probe.node import KvProbeGrounder
from pipeline.harness import NodeHarness
from pipeline.messages import Frame, Mask
from tests.nodes.kv_probe.conftest import ARCHITECTURES, rgb

EXPRESSION = "the red cube"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_frame_gets_one_mask_in_its_geometry(tiny_dirs: dict[str, Path], architecture: str):
    harness = NodeHarness(KvProbeGrounder, {"vlm": str(tiny_dirs[architecture]), "device": "cpu",
                                            "expression": EXPRESSION, "layer": 0, "prefix": EXPRESSION})
    outputs = harness.send("frame", Frame(image=rgb(48, 64), seq=0, frame_id="camera", stamp_ns=7))
    assert [o.port for o in outputs] == ["mask"]
    mask = outputs[0].message
    assert isinstance(mask, Mask) and mask.masks.shape == (1, 48, 64) and mask.masks.dtype == bool
    assert mask.masks.any() and 0.5 <= float(mask.scores[0]) <= 1.0
    assert (mask.labels, mask.frame_id, mask.stamp_ns) == ([EXPRESSION], "camera", 7)
    assert harness.node.counters["frames"] == 1


def test_a_layer_the_model_lacks_is_refused_at_setup(tiny_dirs: dict[str, Path]):
    harness = NodeHarness(KvProbeGrounder, {"vlm": str(tiny_dirs["llava"]), "device": "cpu",
                                            "expression": EXPRESSION, "layer": 2})
    with pytest.raises(ValueError, match="layer 2 is outside the VLM's 2 layers"):
        harness.setup()


def test_a_missing_model_names_the_path(tmp_path: Path):
    harness = NodeHarness(KvProbeGrounder, {"vlm": str(tmp_path / "absent"), "expression": EXPRESSION})
    with pytest.raises(FileNotFoundError, match="absent"):
        harness.setup()
