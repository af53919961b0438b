"""SamMasker and SamSegmenter on a tiny random-weight SamModel: point, box and mask prompts give masks
in the image's frame, one encoder pass per frame whatever the number of prompts, [REJ] gives empty."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.clip.model import MissingModelError
from nodes.sam.node import MaskPrompts, SamMasker, SamSegmenter
from nodes.sam.processing import FOREGROUND, PAD_LABEL
from nodes.sam.similarity import similarity_maps
from pipeline.harness import NodeHarness
from pipeline.messages import Frame, Mask, Message
from streaming.codec import decode, encode
from tests.nodes.sam.conftest import TINY

H, W = 24, 40  # landscape: the pad and the crop back both matter
N = 5


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


def point_prompts(n: int = N) -> dict[str, np.ndarray]:
    """n prompts of two points each; the second point of every other prompt is padding."""
    rng = np.random.default_rng(2)
    points = (rng.random((n, 2, 2)) * [W, H]).astype(np.float32)  # (n, 2, 2) x, y
    labels = np.full((n, 2), FOREGROUND, np.int64)
    labels[::2, 1] = PAD_LABEL
    return {"points": points, "point_labels": labels}


def box_prompts(n: int = N) -> np.ndarray:
    x0 = np.linspace(0, W / 2, n, dtype=np.float32)
    return np.stack([x0, x0 / 4, x0 + W / 2, x0 / 4 + H / 2], axis=1)  # (n, 4)


@pytest.fixture()
def encoder_calls(tiny_sam_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts passes through SamModel's vision encoder, however the model is loaded."""
    from transformers.models.sam import modeling_sam

    calls: list[int] = []
    forward = modeling_sam.SamVisionEncoder.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(modeling_sam.SamVisionEncoder, "forward", counted)
    yield calls


def test_segmenter_answers_points_boxes_and_masks_in_the_image_frame(tiny_sam_dir: Path, image: np.ndarray) -> None:
    sam = SamSegmenter(tiny_sam_dir, num_threads=1)
    assert (sam.embedding_grid, sam.mask_prompt_size) == (TINY.embedding_grid, TINY.mask_prompt_size) == (4, 16)
    embedded = sam.embed(image)
    assert embedded.embedding.shape == (1, TINY.embed_dim, 4, 4)
    assert (embedded.original_hw, embedded.resized_hw) == ((H, W), (19, 32))
    mask_inputs = sam.mask_inputs(np.random.default_rng(3).random((N, H, W), dtype=np.float32))
    assert mask_inputs.shape == (N, 1, 16, 16)
    for prompts in ({**point_prompts()}, {"boxes": box_prompts()}, {"mask_inputs": mask_inputs},
                    {**point_prompts(), "boxes": box_prompts(), "mask_inputs": mask_inputs}):
        for multimask in (False, True):
            masks, scores = sam.segment(embedded, **prompts, multimask=multimask, batch=2)
            assert masks.shape == (N, H, W) and masks.dtype == bool
            assert scores.shape == (N,) and scores.dtype == np.float32
    with pytest.raises(ValueError, match="no prompts"):
        sam.segment(embedded)


def test_reusing_the_embedding_gives_what_one_full_forward_gives(tiny_sam_dir: Path, image: np.ndarray) -> None:
    """Our layout (a batch of N prompts over one expanded embedding) against SamModel's own (pixels in,
    N prompts in the point batch of one image), post-processed by transformers' SamImageProcessor."""
    from transformers import SamImageProcessor

    sam = SamSegmenter(tiny_sam_dir, num_threads=1)
    prompts = point_prompts()
    ours, our_scores = sam.segment(sam.embed(image), **prompts)
    pixels = sam.preprocess(image)  # (1, 3, S, S)
    scaled = torch.from_numpy(prompts["points"] * np.array([32 / W, 19 / H], np.float32))
    with torch.inference_mode():
        out = sam.model(pixel_values=pixels, input_points=scaled[None], multimask_output=False,
                        input_labels=torch.from_numpy(prompts["point_labels"])[None])
    theirs = SamImageProcessor.from_pretrained(tiny_sam_dir).post_process_masks(out.pred_masks, [(H, W)], [(19, 32)])[0]
    assert np.array_equal(ours, theirs[:, 0].numpy())
    assert np.allclose(our_scores, out.iou_scores[0, :, 0].numpy(), atol=1e-5)


def test_uground_similarity_prompts_feed_sam_directly(tiny_sam_dir: Path, image: np.ndarray) -> None:
    sam = SamSegmenter(tiny_sam_dir, num_threads=1)
    maps = similarity_maps(torch.randn(3, 8), torch.randn(36, 8), (6, 6), (H, W), prompt_size=sam.mask_prompt_size)
    masks, scores = sam.segment(sam.embed(image), mask_inputs=maps.prompt)
    assert masks.shape == (3, H, W) and scores.shape == (3,)


def frame(image: np.ndarray, seq: int) -> Frame:
    return Frame(image=image, seq=seq, frame_id="camera", stamp_ns=1_000 + seq)


def test_node_encodes_each_frame_once_for_many_prompt_messages(tiny_sam_dir: Path, image: np.ndarray,
                                                              encoder_calls: list[int]) -> None:
    harness = NodeHarness(SamMasker, {"model": str(tiny_sam_dir), "num_threads": 1})
    harness.send("frame", frame(image, 0))
    assert encoder_calls == []  # nobody asked yet: no encoder pass
    labels = [f"shape {i}" for i in range(N)]
    outputs = [*harness.send("prompts", MaskPrompts(frame_seq=0, labels=labels, **point_prompts())),
               *harness.send("prompts", MaskPrompts(frame_seq=0, boxes=box_prompts())),
               *harness.send("prompts", MaskPrompts(frame_seq=0, masks=np.zeros((N, H, W), np.float32)))]
    assert len(encoder_calls) == 1
    assert [o.port for o in outputs] == ["masks"] * 3
    for out in outputs:
        mask = out.message
        assert isinstance(mask, Mask)
        assert mask.masks.shape == (N, H, W) and mask.masks.dtype == bool and mask.scores.shape == (N,)
        assert (mask.frame_id, mask.stamp_ns) == ("camera", 1_000)
    assert outputs[0].message.labels == labels and outputs[1].message.labels[0] == "prompt-0"
    harness.send("frame", frame(image, 1))
    harness.send("prompts", MaskPrompts(boxes=box_prompts(2)))  # frame_seq -1: the newest
    harness.send("prompts", MaskPrompts(frame_seq=0, boxes=box_prompts(2)))  # still cached: no new pass
    assert len(encoder_calls) == 2
    assert harness.node.counters["embeddings_computed"] == 2 and harness.node.counters["embedding_reuses"] == 3


def test_rejected_prompts_get_empty_masks_and_an_all_rejected_frame_is_never_encoded(
        tiny_sam_dir: Path, image: np.ndarray, encoder_calls: list[int]) -> None:
    harness = NodeHarness(SamMasker, {"model": str(tiny_sam_dir), "num_threads": 1, "mask_threshold": -1e9})
    harness.send("frame", frame(image, 0))
    rejected = harness.send("prompts", MaskPrompts(frame_seq=0, reject=np.ones(3, bool)))[0].message
    assert rejected.masks.shape == (3, H, W) and not rejected.masks.any() and not rejected.scores.any()
    assert encoder_calls == []
    reject = np.array([True, False, True, False, False])
    mixed = harness.send("prompts", MaskPrompts(frame_seq=0, reject=reject, boxes=box_prompts()))[0].message
    assert len(encoder_calls) == 1
    assert not mixed.masks[reject].any() and (mixed.scores[reject] == 0).all()
    assert mixed.masks[~reject].all()  # threshold -1e9: every pixel of a prompt SAM ran on is in


def test_prompts_wait_for_their_frame_and_are_dropped_once_it_is_gone(tiny_sam_dir: Path, image: np.ndarray) -> None:
    harness = NodeHarness(SamMasker, {"model": str(tiny_sam_dir), "num_threads": 1, "cache_frames": 2})
    assert harness.send("prompts", MaskPrompts(frame_seq=1, boxes=box_prompts(1))) == []
    harness.send("frame", frame(image, 0))
    answered = harness.send("frame", frame(image, 1))
    assert [o.message.stamp_ns for o in answered] == [1_001]
    harness.send("frame", frame(image, 2))  # frame 0 leaves the cache of two
    assert harness.send("prompts", MaskPrompts(frame_seq=0, boxes=box_prompts(1))) == []
    assert harness.node.counters["prompts_dropped"] == 1
    with pytest.raises(ValueError, match="disagree on N"):
        harness.node.on_prompts(MaskPrompts(frame_seq=2, boxes=box_prompts(2), reject=np.zeros(3, bool)))
    with pytest.raises(ValueError, match="in the image's frame"):
        harness.node.on_prompts(MaskPrompts(frame_seq=2, masks=np.zeros((1, 16, 16), np.float32)))


def test_prompts_cross_the_wire_whole() -> None:
    sent = MaskPrompts(frame_seq=7, labels=["a", "b"], reject=np.array([False, True]), **point_prompts(2))
    received = Message.from_payload(decode(encode(sent.to_payload())))
    assert isinstance(received, MaskPrompts) and received.frame_seq == 7 and received.labels == ["a", "b"]
    assert np.array_equal(received.points, sent.points) and received.boxes is None and received.count() == 2


def test_a_missing_model_is_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match=r"no SAM model at .*nope"):
        NodeHarness(SamMasker, {"model": str(tmp_path / "nope")}).setup()
