"""UGround at inference: [REJ] gives an empty mask without running SAM; the metrics follow gRefCOCO's rules;
the node answers a recorded frame through the harness with a mask in the frame's pixels, or says why not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.messages import Instruction, Mask
from nodes.uground.data import ReferringSource
from nodes.uground.evaluate import DEFAULT_VARIANTS, MODE1, Prediction, Tally, evaluate, layer_variants, predict
from nodes.uground.model import UGroundModel, load_uground
from nodes.uground.node import UGroundGrounder, UGroundNode, crop_box, referring_expression
from pipeline.harness import NodeHarness, recording_inputs
from pipeline.messages import Frame
from sim.shapes_world.dataset import HELDOUT
from sim.shapes_world.referring import EMPTY
from streaming.recording import RecordingWriter
from tests.nodes.uground.conftest import STILL_PX, TINY

CPU = torch.device("cpu")
CAMERA = "camera/frame"


@pytest.fixture()
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Makes the model answer [SEG] (> 0) or [REJ] (< 0) by the logit gap set in the returned dict."""
    gap = {"present": -5.0}
    read = UGroundModel.read

    def scripted(self, *args, **kwargs):
        reading = read(self, *args, **kwargs)
        reading.present = torch.full_like(reading.present, gap["present"])
        return reading

    monkeypatch.setattr(UGroundModel, "read", scripted)
    return gap


@pytest.fixture()
def sam_encoder_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    embed = UGroundModel.embed_images
    def counted(self: UGroundModel, pixels: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixels))
        return embed(self, pixels)

    monkeypatch.setattr(UGroundModel, "embed_images", counted)
    return calls


def test_rej_gives_an_empty_mask_and_sam_never_runs(tiny_uground_dir: Path, answers: dict[str, float],
                                                    sam_encoder_calls: list[int]) -> None:
    model, encoder = load_uground(tiny_uground_dir)
    samples = ReferringSource(HELDOUT, 4, STILL_PX).all_samples(limit=5)
    batch = encoder.batch(samples)
    out = predict(model, encoder, batch, DEFAULT_VARIANTS, CPU, threshold=-1e9)  # any SAM pixel would show
    assert sam_encoder_calls == []
    for name, predictions in out.items():
        assert all(not p.present and not p.mask.any() and p.layer == -1 and p.p_seg < 0.01 for p in predictions), name
    answers["present"] = 5.0
    seg = predict(model, encoder, batch, DEFAULT_VARIANTS, CPU, threshold=-1e9)
    assert sam_encoder_calls == [len(samples)]  # once for every variant
    assert all(p.present and p.mask.all() for p in seg[MODE1])


def test_metrics_follow_grefcoco(tiny_uground_dir: Path) -> None:
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    tally = Tally()
    tally.add(Prediction(truth.copy(), True, 0.9), truth, "attribute")  # exact: IoU 1
    half = np.zeros((4, 4), bool)
    half[:2, :1] = True
    tally.add(Prediction(half, True, 0.9), truth, "attribute")  # IoU 0.5
    tally.add(Prediction(np.zeros((4, 4), bool), False, 0.1), np.zeros((4, 4), bool), EMPTY)  # [REJ] right: 1
    tally.add(Prediction(truth.copy(), True, 0.9), np.zeros((4, 4), bool), EMPTY)  # a mask for nothing: 0
    metrics = tally.metrics()
    assert metrics["giou"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert metrics["ciou"] == pytest.approx((4 + 2) / (4 + 4 + 0 + 4))
    assert metrics["empty_accuracy"] == 0.5 and metrics["target_accuracy"] == 1.0
    assert metrics["giou_by_kind"] == {"attribute": 0.75, "empty": 0.5}
    model, encoder = load_uground(tiny_uground_dir)
    variants = DEFAULT_VARIANTS + layer_variants(TINY.num_layers)
    held = evaluate(model, encoder, ReferringSource(HELDOUT, 2, STILL_PX).all_samples(), CPU, batch_size=4,
                    variants=variants)
    assert set(held) == {v.name for v in variants} and all(0.0 <= m["giou"] <= 1.0 for m in held.values())


def recorded_frame(path: Path, image: np.ndarray) -> Path:
    frame = Frame(image=image, frame_id="camera", stamp_ns=42, seq=0, episode=3, step=7)
    with RecordingWriter(path) as writer:
        writer.write(frame.to_payload(), CAMERA, log_time_ns=1_000)
    return path


def test_the_node_answers_a_recorded_frame_through_the_harness(tiny_uground_dir: Path, tmp_path: Path,
                                                                answers: dict[str, float]) -> None:
    sample = ReferringSource(HELDOUT, 2, STILL_PX).all_samples(limit=1)[0]
    image = np.pad(sample.image, ((0, 16), (0, 0), (0, 0)))  # (80, 64): not square
    inputs = recording_inputs(recorded_frame(tmp_path / "run.mcap", image), {"frame": CAMERA})
    params = {"model": str(tiny_uground_dir), "num_threads": 1, "instruction": sample.expression, "min_pixels": 0}
    answers["present"] = 5.0
    found = NodeHarness(UGroundNode, params).run(inputs)
    assert [o.port for o in found] == ["mask"]
    mask = found[0].message
    assert isinstance(mask, Mask) and mask.masks.shape[1:] == (80, 64) and mask.masks.dtype == bool
    assert (mask.frame_id, mask.stamp_ns, mask.episode, mask.step) == ("camera", 42, 3, 7)
    assert mask.query == sample.expression and mask.reason == "" and len(mask.masks) == 1
    answers["present"] = -5.0
    harness = NodeHarness(UGroundNode, {**params, "instruction": None})
    assert harness.run(inputs) == []  # no expression yet: the frame waits for its episode's
    absent = harness.send("instruction", Instruction(text="the purple star", episode=3))[0].message
    assert absent.masks.shape == (0, 80, 64) and absent.reason.startswith("absent: [REJ] for 'the purple star'")
    assert harness.node.counters["absent"] == 1


def test_the_grounder_checks_its_options(tiny_uground_dir: Path) -> None:
    with pytest.raises(ValueError, match="mode 4"):
        UGroundGrounder(str(tiny_uground_dir), mode=4)
    with pytest.raises(ValueError, match="unknown options"):
        UGroundGrounder(str(tiny_uground_dir), colour="red")


@pytest.mark.parametrize(("instruction", "expression"), [
    ("pick the green cube", "the green cube"), ("Pick up the red cube.", "the red cube"),
    ("please grab all cubes", "all cubes"), ("the purple star", "the purple star"),
    ("pickled the red circle", "pickled the red circle")])
def test_an_instruction_becomes_the_expression_uground_segments(instruction: str, expression: str) -> None:
    assert referring_expression(instruction) == expression


def test_the_grounder_grounds_in_its_crop_and_pastes_the_mask_back(tiny_uground_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[tuple[int, ...], str]] = []

    def whole_view(self, images, expressions, *args, **kwargs):  # records the view, answers [SEG] over all of it
        seen.append((images[0].shape, expressions[0]))
        return original(self, images, expressions, *args, **kwargs)

    from nodes.uground.data import UGroundEncoder
    original = UGroundEncoder.encode
    monkeypatch.setattr(UGroundEncoder, "encode", whole_view)
    monkeypatch.setattr(UGroundModel, "read", _present_everywhere(UGroundModel.read))
    grounder = UGroundGrounder(str(tiny_uground_dir), crop=[10, 20, 50, 60], image_size=STILL_PX, min_pixels=0)
    grounding = grounder.ground_image(np.zeros((100, 120, 3), np.uint8), "pick up the red cube")
    assert seen == [((STILL_PX, STILL_PX, 3), "the red cube")]
    assert grounding.mask.shape == (100, 120)
    outside = grounding.mask.copy()
    outside[20:60, 10:50] = False
    assert not outside.any()  # nothing outside the crop
    assert crop_box(None, (100, 120, 3)) == (0, 0, 120, 100)
    with pytest.raises(ValueError, match="not a box inside the 120x100 frame"):
        crop_box([0, 0, 130, 50], (100, 120, 3))


def _present_everywhere(read):
    """UGroundModel.read, answering [SEG] for every row."""
    def wrapped(self, *args, **kwargs):
        reading = read(self, *args, **kwargs)
        reading.present = torch.full_like(reading.present, 5.0)
        return reading
    return wrapped
