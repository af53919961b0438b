"""ClipPrescan on a tiny shapes-world clip with a tiny random CLIP: the scores are the cosine of each
sampled frame to the question (with options: the best over the question alone and with each option);
a second question on the same video costs no CLIP pass; a damaged cache entry is recomputed; another
fps is another entry; frames from VideoIngest are scored in batches; a missing model or video is a
clear error; a broken video is scored up to the break."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nodes.clip.embedder import TorchClipEmbedder
from nodes.clip.model import MissingModelError
from nodes.clip.onnx_export import export_clip
from nodes.clip_prescan import FLUSH_AFTER_S, ClipPrescan, query_scores, query_texts
from nodes.video_decode import iter_frames
from pipeline.graph import build_graph
from pipeline.harness import NodeHarness, TimedInput
from pipeline.inproc import InprocExecutor
from pipeline.messages import Frame, FrameScores
from tests.nodes.clip.tiny import CLIP_FPS, CLIP_SECONDS, build_tiny_clip, write_shapes_clip

QUESTION = "Which shape met the red circle?"
MAX_TICKS = 10_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_clip(tmp_path_factory.mktemp("video") / "shapes.mp4")[0]


def prescan(params: dict) -> tuple[list[FrameScores], dict[str, int]]:
    """Run the node as a source to its end; what it emitted and its counters."""
    harness = NodeHarness(ClipPrescan, params)
    outputs = []
    try:
        for _ in range(MAX_TICKS):
            if harness.runner.finished:
                break
            outputs += [o.message for o in harness.tick()]
    finally:
        harness.close()
    assert harness.runner.finished, "the prescan never finished"
    return outputs, dict(harness.node.counters)


def expected_scores(model_dir: Path, video: Path, question: str, fps: float | None) -> tuple[list[int], np.ndarray]:
    embedder = TorchClipEmbedder(model_dir, device="cpu")
    decoded = list(iter_frames(str(video), fps=fps))
    images = np.stack([image for _, _, image in decoded])
    return [i for i, _, _ in decoded], embedder.embed_images(images) @ embedder.embed_texts([question])[0]


def test_scores_are_each_frames_cosine_to_the_question(model_dir: Path, video: Path, tmp_path: Path) -> None:
    out, counters = prescan({"video": str(video), "model": str(model_dir), "question": QUESTION, "fps": 2.0,
                             "batch_size": 3, "cache_dir": str(tmp_path / "cache"), "device": "cpu"})
    assert len(out) == 1
    scores = out[0]
    indices, expected = expected_scores(model_dir, video, QUESTION, 2.0)
    assert scores.query == QUESTION and scores.frame_indices.tolist() == indices == list(range(0, 40, 5))
    np.testing.assert_allclose(scores.times_s, np.array(indices) / CLIP_FPS)
    assert scores.scores.dtype == np.float32 and np.all(np.abs(scores.scores) <= 1.0 + 1e-6)
    np.testing.assert_allclose(scores.scores, expected, atol=1e-5)
    assert counters["frames_embedded"] == len(indices) and counters["cache_misses"] == 1
    assert counters.get("cache_hits", 0) == 0


def test_query_texts_and_each_frames_best_query() -> None:
    assert query_texts("Which shape met the red circle?", ["blue square", "green star"]) == [
        "Which shape met the red circle?", "Which shape met the red circle? blue square",
        "Which shape met the red circle? green star"]
    assert query_texts("a red circle") == ["a red circle"]
    frames = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # (N, D)
    queries = np.array([[1.0, 0.0], [0.8, 0.6]])  # (Q, D)
    scores = query_scores(frames, queries)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [1.0, 0.6, 0.96], atol=1e-6)  # max(1, .8); max(0, .6); max(.6, .96)


def test_options_score_each_frame_by_its_best_query(model_dir: Path, video: Path) -> None:
    options = ["blue square", "green star", "red circle", "yellow cross"]
    out, _ = prescan({"video": str(video), "model": str(model_dir), "question": QUESTION, "options": options,
                      "fps": 2.0, "cache_dir": None, "device": "cpu"})
    per_text = np.stack([expected_scores(model_dir, video, text, 2.0)[1] for text in query_texts(QUESTION, options)])
    np.testing.assert_allclose(out[0].scores, per_text.max(0), atol=1e-5)  # (Q, N) → (N,)
    assert out[0].query == QUESTION
    assert np.any(out[0].scores > per_text[0] + 1e-4), "no option query beat the question alone on any frame"


def test_a_second_question_costs_no_clip_pass_and_a_damaged_entry_is_recomputed(
        model_dir: Path, video: Path, tmp_path: Path) -> None:
    params = {"video": str(video), "model": str(model_dir), "question": QUESTION, "batch_size": 4,
              "cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    first, counters = prescan(params)
    assert counters["frames_embedded"] == int(CLIP_SECONDS)  # 1 fps by default
    again, counters = prescan(params)
    assert counters["cache_hits"] == 1 and counters.get("frames_embedded", 0) == 0
    np.testing.assert_array_equal(again[0].scores, first[0].scores)
    np.testing.assert_array_equal(again[0].frame_indices, first[0].frame_indices)

    other, counters = prescan({**params, "question": "a blue square"})
    assert counters["cache_hits"] == 1 and counters.get("frames_embedded", 0) == 0
    _, expected = expected_scores(model_dir, video, "a blue square", 1.0)
    np.testing.assert_allclose(other[0].scores, expected, atol=1e-5)

    (entry,) = (tmp_path / "cache").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    recomputed, counters = prescan(params)
    assert counters["cache_misses"] == 1 and counters["frames_embedded"] == int(CLIP_SECONDS)
    np.testing.assert_allclose(recomputed[0].scores, first[0].scores, atol=1e-6)

    _, counters = prescan({**params, "fps": 5.0})
    assert counters["cache_misses"] == 1 and counters["frames_embedded"] == int(CLIP_SECONDS * 5)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one entry per fps


def test_retrained_weights_miss_the_old_entries(video: Path, tmp_path: Path) -> None:
    model = build_tiny_clip(tmp_path / "clip", seed=0)
    params = {"video": str(video), "model": str(model), "question": QUESTION, "cache_dir": str(tmp_path / "cache")}
    prescan(params)
    build_tiny_clip(tmp_path / "clip", seed=1)  # new weights, same directory
    _, counters = prescan(params)
    assert counters["cache_misses"] == 1 and counters["frames_embedded"] == int(CLIP_SECONDS)


def test_onnx_backend_scores_like_torch(model_dir: Path, video: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed in this environment")
    onnx_dir = tmp_path / "onnx"
    export_clip(model_dir, onnx_dir)
    common = {"video": str(video), "question": QUESTION, "cache_dir": None, "fps": 2.0}
    by_torch, _ = prescan({**common, "model": str(model_dir), "backend": "torch"})
    by_onnx, counters = prescan({**common, "model": str(onnx_dir), "backend": "onnx"})
    assert counters["frames_embedded"] == 8 and "cache_misses" not in counters  # no cache asked for
    np.testing.assert_allclose(by_onnx[0].scores, by_torch[0].scores, atol=1e-4)


def test_frames_from_upstream_are_scored_in_batches_and_a_partial_batch_after_silence(
        model_dir: Path, video: Path) -> None:
    frames = [Frame(image=image, index=i, pts_s=t, stamp_ns=1_000 + i) for i, t, image in iter_frames(str(video), fps=2.5)]
    assert len(frames) == 10
    harness = NodeHarness(ClipPrescan, {"model": str(model_dir), "question": QUESTION, "batch_size": 4})
    try:
        out = harness.run([TimedInput(0.01 * k, "frame", f) for k, f in enumerate(frames)])
        assert [o.message.frame_indices.tolist() for o in out] == [[0, 4, 8, 12], [16, 20, 24, 28]]
        assert out[0].message.stamp_ns == 1_000 + 12  # the newest frame's capture time
        rest = harness.run([], until_s=0.1 + FLUSH_AFTER_S)
        assert [o.message.frame_indices.tolist() for o in rest] == [[32, 36]]
        assert harness.run([], until_s=5.0) == []  # silence with nothing pending sends nothing
        assert harness.node.counters["frames_embedded"] == 10
        _, expected = expected_scores(model_dir, video, QUESTION, 2.5)
        got = np.concatenate([o.message.scores for o in out + rest])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert harness.tick() == [] and harness.runner.finished  # not a source without a video
    finally:
        harness.close()


def test_missing_model_and_video_are_clear_errors(model_dir: Path, video: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingModelError, match="groundloop train clip"):
        NodeHarness(ClipPrescan, {"video": str(video), "model": str(tmp_path / "nope"), "question": "q"}).setup()
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        NodeHarness(ClipPrescan, {"video": str(tmp_path / "missing.mp4"), "model": str(model_dir),
                                  "question": "q"}).setup()


def test_a_broken_video_is_scored_up_to_the_break_and_not_cached(model_dir: Path, video: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    data = video.read_bytes()
    broken.write_bytes(data[: int(len(data) * 0.8)])  # the moov atom is first: the start decodes
    out, counters = prescan({"video": str(broken), "model": str(model_dir), "question": QUESTION, "fps": None,
                             "cache_dir": str(tmp_path / "cache")})
    assert counters["decode_errors"] == 1
    n = len(out[0].frame_indices)
    assert 0 < n < int(CLIP_SECONDS * CLIP_FPS) and out[0].frame_indices.tolist() == list(range(n))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_runs_as_a_source_in_an_inproc_graph(model_dir: Path, video: Path, tmp_path: Path) -> None:
    params = {"video": str(video), "model": str(model_dir), "question": QUESTION, "cache_dir": str(tmp_path / "c")}
    spec = {"name": "prescan", "nodes": [{"id": "clip", "uses": "nodes.clip_prescan.ClipPrescan", "params": params}]}
    (metrics,) = InprocExecutor(build_graph(spec, "prescan.yaml")).run(max_seconds=60)
    assert metrics["emitted"]["scores"] == 1 and metrics["handler_errors"] == 0
    assert metrics["counters"]["frames_embedded"] == int(CLIP_SECONDS)


def test_the_end_of_the_stream_flushes_the_last_partial_batch(model_dir: Path, video: Path) -> None:
    clip = {"model": str(model_dir), "question": QUESTION, "batch_size": 4}
    spec = {"name": "ingest_then_prescan", "nodes": [
        {"id": "ingest", "uses": "nodes.video_ingest.VideoIngest", "params": {"path": str(video), "fps": 2.5}},
        {"id": "clip", "uses": "nodes.clip_prescan.ClipPrescan", "params": clip,
         "inputs": {"frame": {"from": "ingest/frame", "policy": "queue", "size": 64}}}]}
    metrics = {m["node"]: m for m in InprocExecutor(build_graph(spec, "ingest.yaml")).run(max_seconds=60)}
    assert metrics["clip"]["counters"]["frames_embedded"] == 10  # 4 + 4 + the last 2, no timeout needed
    assert metrics["clip"]["emitted"]["scores"] == 3
