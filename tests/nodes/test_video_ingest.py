"""VideoIngest and the video_decode functions on tiny clips written here: exact times (also variable
frame rate), nearest-frame resampling, the two backends agreeing, truncated and missing files, and
the bounded run-ahead thread."""
from __future__ import annotations

import logging
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from nodes.video_decode import (BACKEND_AV, BACKEND_DECORD, VideoDecodeError, is_live, iter_frames, probe_video,
                                select_frames)
from nodes.video_ingest import VideoIngest
from pipeline.graph import build_graph
from pipeline.harness import NodeHarness
from pipeline.inproc import InprocExecutor
from pipeline.messages import Frame
from pipeline.node import ParamsError
from sim.shapes_world.render import write_video
from sim.shapes_world.scene import SceneConfig, make_scene

BACKENDS = (BACKEND_DECORD, BACKEND_AV)
GREY_STEP = 8  # frame k is a flat grey of k * GREY_STEP, so a decoded frame tells its own index
SIZE = 32
MS = Fraction(1, 1000)


def write_clip(path: Path, pts_ms: list[int]) -> Path:
    """H.264 MP4 (index first) whose frame k is shown at pts_ms[k] milliseconds."""
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=10, options={"preset": "ultrafast", "crf": "10"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = MS
        for k, pts in enumerate(pts_ms):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE, SIZE, 3), k * GREY_STEP, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, MS
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def grey_index(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / GREY_STEP))


def drain(harness: NodeHarness, limit: int = 10_000) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(limit):
        if harness.runner.finished:
            break
        frames += [o.message for o in harness.tick()]
    return frames


def ingest(params: dict) -> tuple[list[Frame], dict]:
    harness = NodeHarness(VideoIngest, params)
    try:
        frames = drain(harness)
    finally:
        harness.close()
    return frames, harness.metrics["counters"]


CFR_MS = [100 * k for k in range(30)]
VFR_MS = [sum((50, 150)[k % 2] for k in range(n)) for n in range(30)]  # 0, 50, 200, 250, 400, ...


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {"cfr": write_clip(root / "cfr.mp4", CFR_MS), "vfr": write_clip(root / "vfr.mp4", VFR_MS)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, written", [("cfr", CFR_MS), ("vfr", VFR_MS)])
def test_every_frame_carries_the_time_it_was_written_with(clips, backend, name, written) -> None:
    frames, counters = ingest({"path": str(clips[name]), "backend": backend})
    assert [f.index for f in frames] == list(range(len(written)))
    assert [f.pts_s for f in frames] == [ms / 1000 for ms in written]
    assert [grey_index(f.image) for f in frames] == list(range(len(written)))
    assert counters == {"frames": len(written)}


def test_probe_reports_what_was_written(clips) -> None:
    info = probe_video(str(clips["vfr"]))
    assert (info.n_frames, info.width, info.height) == (30, SIZE, SIZE)
    assert info.duration_s == pytest.approx(VFR_MS[-1] / 1000 + 0.15, abs=0.2)


def nearest(times_s: list[float], fps: float) -> list[int]:
    """Brute force: for each target k / fps up to the last frame, the nearest frame (earlier on ties)."""
    times = np.asarray(times_s)
    targets = np.arange(0.0, times[-1] + 1e-9, 1.0 / fps)
    return list(dict.fromkeys(int(np.argmin(np.abs(times - t))) for t in targets))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, written, fps", [("cfr", CFR_MS, 3.0), ("vfr", VFR_MS, 4.0), ("vfr", VFR_MS, 1.5)])
def test_resampling_picks_the_frame_nearest_each_target_time(clips, backend, name, written, fps) -> None:
    times = [ms / 1000 for ms in written]
    frames, _ = ingest({"path": str(clips[name]), "backend": backend, "fps": fps, "batch_size": 4})
    expected = nearest(times, fps)
    assert [f.index for f in frames] == expected
    assert [f.pts_s for f in frames] == [times[i] for i in expected]
    assert [grey_index(f.image) for f in frames] == expected
    assert select_frames(np.asarray(times), fps).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_time_window_reads_only_its_frames(clips, backend) -> None:
    frames, _ = ingest({"path": str(clips["cfr"]), "backend": backend, "start_s": 1.0, "end_s": 2.0})
    assert [f.index for f in frames] == list(range(10, 20))
    assert [grey_index(f.image) for f in frames] == list(range(10, 20))


@pytest.fixture(scope="module")
def shapes_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real content with B-frames: a 6-second shapes-world scene at 96 px."""
    scene = make_scene(SceneConfig(duration_s=6.0, width=96, height=96), seed=2)
    return write_video(scene, tmp_path_factory.mktemp("shapes") / "scene.mp4")


@pytest.mark.parametrize("options", [{}, {"fps": 4.0, "max_side": 64}, {"start_s": 2.5, "batch_size": 5}])
def test_both_backends_give_the_same_frames(shapes_clip, options) -> None:
    runs = {b: list(iter_frames(str(shapes_clip), backend=b, **options)) for b in BACKENDS}
    ours, theirs = runs[BACKEND_DECORD], runs[BACKEND_AV]
    assert len(ours) == len(theirs) > 0
    for (i, t, image), (j, u, other) in zip(ours, theirs):
        assert (i, t) == (j, u)
        assert image.shape == other.shape and np.array_equal(image, other)
    if "max_side" in options:
        assert ours[0][2].shape == (64, 64, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_file_yields_the_frames_before_the_cut_then_names_the_break(
        tmp_path, backend, caplog: pytest.LogCaptureFixture) -> None:
    whole = write_clip(tmp_path / "whole.mp4", [100 * k for k in range(60)])
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.ERROR):
        frames, counters = ingest({"path": str(cut), "backend": backend})
    n = len(frames)
    assert 0 < n < 60
    assert [f.index for f in frames] == list(range(n)) and [grey_index(f.image) for f in frames] == list(range(n))
    assert counters["decode_errors"] == 1 and counters["frames"] == n
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert str(cut) in logged and f"frame {n}" in logged

    with pytest.raises(VideoDecodeError) as failure:
        for _ in iter_frames(str(cut), backend=backend):
            pass
    assert failure.value.frame_index == n and str(cut) in str(failure.value)


def test_a_truncated_file_ends_the_stream_not_the_graph(tmp_path) -> None:
    whole = write_clip(tmp_path / "whole.mp4", [100 * k for k in range(40)])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    graph = build_graph({"name": "ingest", "nodes": [{"id": "video", "uses": "VideoIngest", "params": {"path": str(cut)}}]},
                        "ingest.yaml")
    (metrics,) = InprocExecutor(graph).run(max_seconds=30)
    assert metrics["counters"]["decode_errors"] == 1 and 0 < metrics["emitted"]["frame"] < 40
    assert metrics["handler_errors"] == 0


def test_a_missing_file_fails_setup_naming_it(tmp_path) -> None:
    missing = tmp_path / "nowhere.mp4"
    harness = NodeHarness(VideoIngest, {"path": str(missing)})
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        harness.setup()
    harness.close()


def test_params_refuse_decord_for_streams_and_empty_windows() -> None:
    assert is_live("rtsp://camera/stream") and is_live("/dev/video0") and not is_live("file:///tmp/a.mp4")
    with pytest.raises(ParamsError, match="decord reads local files only"):
        VideoIngest({"path": "rtsp://camera/stream", "backend": "decord"})
    with pytest.raises(ParamsError, match="end_s"):
        VideoIngest({"path": "a.mp4", "start_s": 2.0, "end_s": 1.0})


def test_a_stream_is_read_in_order_with_its_own_times(clips) -> None:
    """The live path (what rtsp/v4l2 take), here fed a file by naming its format."""
    frames, _ = ingest({"path": str(clips["vfr"]), "av_format": "mp4", "fps": 4.0})
    expected = nearest([ms / 1000 for ms in VFR_MS], 4.0)
    assert [f.index for f in frames] == expected and [grey_index(f.image) for f in frames] == expected


def test_decoding_runs_ahead_into_a_bounded_queue_and_close_joins_the_thread(clips) -> None:
    harness = NodeHarness(VideoIngest, {"path": str(clips["cfr"]), "batch_size": 2, "queue_batches": 3})
    harness.setup()
    readahead = harness.node.readahead
    deadline = time.monotonic() + 10
    while readahead.produced < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time enough to overrun the queue, were it unbounded
    assert readahead.produced == 3 and readahead.queue.qsize() == 3
    assert [o.message.index for o in harness.tick(3)] == [0, 1, 2]  # a batch and a half consumed
    harness.close()
    assert not readahead.thread.is_alive()


def test_progress_counts_toward_the_frames_the_window_and_rate_select(clips) -> None:
    harness = NodeHarness(VideoIngest, {"path": str(clips["vfr"]), "fps": 4.0, "start_s": 0.5})
    try:
        frames = drain(harness)
    finally:
        harness.close()
    assert harness.metrics["progress"] == {"done": len(frames), "total": len(frames), "unit": "frames"}
