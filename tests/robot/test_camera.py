"""LiveCamera and the CameraSource node on a tiny clip: a TCP stream served by the system ffmpeg that is
killed and restarted (the camera reconnects), a file (looped or not), a bad URL and a missing file
(clear errors), the rate cap, and close() stopping the capture thread. Every wait is bounded by a
number of reads; the assertions are on counts and order, never on wall-clock durations."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from nodes.camera import RATE_TOLERANCE, CameraSource
from pipeline.harness import NodeHarness
from pipeline.messages import Frame
from robot.camera import CameraError, CapturedFrame, LiveCamera

WIDTH, HEIGHT, FPS, N_FRAMES = 64, 48, 10, 10
GREY_STEP = 20  # frame k is a flat grey of k * GREY_STEP, so a decoded frame tells its place in the clip
KEYFRAME_EVERY = 5
READ_S = 0.2  # one bounded wait for a frame
MAX_READS = 150  # reads before a test gives up waiting (tens of seconds at most)
SERVER_STOP_S = 5.0
FAST_RETRY = {"timeout_s": 2.0, "backoff_s": 0.05, "backoff_max_s": 0.4}
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not on PATH: the stream tests serve a clip with it")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-second H.264 MP4 of flat greys."""
    path = tmp_path_factory.mktemp("camera") / "clip.mp4"
    rate = Fraction(1, FPS)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(KEYFRAME_EVERY)})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for k in range(N_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((HEIGHT, WIDTH, 3), k * GREY_STEP, np.uint8), format="rgb24")
            frame.pts, frame.time_base = k, rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grey_index(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / GREY_STEP))


class ClipServer:
    """The clip looped forever as MPEG-TS over TCP by the system ffmpeg, at its own pace (-re)."""

    def __init__(self, clip: Path, port: int):
        self.url = f"tcp://127.0.0.1:{port}"
        self.command = [FFMPEG or "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
                        "-i", str(clip), "-c", "copy", "-f", "mpegts", f"{self.url}?listen=1"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(SERVER_STOP_S)


@pytest.fixture
def server(clip: Path) -> Iterator[ClipServer]:
    served = ClipServer(clip, free_port())
    served.start()
    yield served
    served.kill()


def read_until(camera: LiveCamera, done, max_reads: int = MAX_READS) -> list[CapturedFrame]:
    """Frames read until `done(frames)` holds; fails the test after `max_reads` reads."""
    frames: list[CapturedFrame] = []
    for _ in range(max_reads):
        frame = camera.read(READ_S)
        if frame is not None:
            frames.append(frame)
            if done(frames):
                return frames
    pytest.fail(f"camera {camera.source}: condition not met after {max_reads} reads ({len(frames)} frames)")


def capture_threads(camera: LiveCamera) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"camera {camera.source}"]


@needs_ffmpeg
@pytest.mark.timeout(90)
def test_stream_reconnects_after_the_server_drops(server: ClipServer) -> None:
    with LiveCamera(server.url, max_retries=None, **FAST_RETRY) as camera:
        before = read_until(camera, lambda frames: len(frames) >= 3)
        assert {f.connection for f in before} == {0} and camera.drops == 0 and camera.reconnects == 0
        server.kill()
        for _ in range(MAX_READS):  # the dropped stream is noticed (drain what the buffer still holds)
            if camera.drops:
                break
            camera.read(READ_S)
        assert camera.drops >= 1
        server.start()
        after = read_until(camera, lambda frames: sum(f.connection > 0 for f in frames) >= 3)
        assert camera.reconnects >= 1
    frames = before + after
    assert [f.index for f in frames] == sorted({f.index for f in frames})  # strictly increasing, across the drop
    assert all(a.capture_ns < b.capture_ns for a, b in zip(frames, frames[1:]))
    assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.pts_s is not None for f in frames)
    assert not capture_threads(camera)


@needs_ffmpeg
@pytest.mark.timeout(90)
def test_node_emits_stream_frames_with_counters(server: ClipServer) -> None:
    harness = NodeHarness(CameraSource, {"source": server.url, "frame_id": "cam0", **FAST_RETRY})
    frames: list[Frame] = []
    try:
        for _ in range(MAX_READS):
            frames += [o.message for o in harness.tick()]
            if len(frames) >= 3:
                break
    finally:
        harness.close()
    assert len(frames) >= 3
    assert all(f.frame_id == "cam0" and f.image.shape == (HEIGHT, WIDTH, 3) for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert all(a.stamp_ns < b.stamp_ns for a, b in zip(frames, frames[1:]))
    counters = harness.metrics["counters"]
    assert counters["frames"] == len(frames) and counters["drops"] == 0 and counters["reconnects"] == 0


def test_file_plays_in_order_and_loops(clip: Path) -> None:
    n = N_FRAMES + N_FRAMES // 2
    with LiveCamera(str(clip), loop=True, buffer_frames=n) as camera:
        frames = read_until(camera, lambda got: len(got) >= n)
    assert [f.index for f in frames] == list(range(n))  # a buffer this large skips nothing
    assert [grey_index(f.image) for f in frames] == [k % N_FRAMES for k in range(n)]
    assert [f.connection for f in frames] == [k // N_FRAMES for k in range(n)]
    assert camera.drops == 0 and camera.reconnects == 0 and camera.skipped == 0


def test_file_without_loop_ends(clip: Path) -> None:
    with LiveCamera(f"file://{clip}", buffer_frames=N_FRAMES, realtime=False) as camera:
        frames = read_until(camera, lambda got: len(got) == N_FRAMES)
        assert camera.read(READ_S) is None and camera.ended
    assert [grey_index(f.image) for f in frames] == list(range(N_FRAMES))
    assert [f.pts_s for f in frames] == pytest.approx([k / FPS for k in range(N_FRAMES)])


def test_small_buffer_keeps_the_newest(clip: Path) -> None:
    with LiveCamera(str(clip), realtime=False) as camera:
        for _ in range(MAX_READS):  # let the unpaced decoder run past the consumer to the end
            if camera.frames == N_FRAMES and camera.skipped:
                break
            time.sleep(READ_S)
        newest = camera.read(READ_S)
    assert newest is not None and newest.index == N_FRAMES - 1
    assert camera.skipped == N_FRAMES - 1


@pytest.mark.timeout(60)
def test_bad_url_fails_after_its_retries_naming_it() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with LiveCamera(url, max_retries=2, timeout_s=1.0, backoff_s=0.01, backoff_max_s=0.02) as camera:
        with pytest.raises(CameraError, match=rf"{url}.*after 3 attempts \(2 retries\)"):
            for _ in range(MAX_READS):
                camera.read(READ_S)
        assert camera.ended


@pytest.mark.timeout(60)
def test_node_reports_a_camera_that_gives_up() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    harness = NodeHarness(CameraSource, {"source": url, "max_retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.01})
    try:
        harness.setup()
        with pytest.raises(CameraError, match=url):
            for _ in range(MAX_READS):
                harness.node.tick()
    finally:
        harness.close()


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        LiveCamera(str(missing)).open()


def test_rate_cap_spaces_frames_by_capture_time(clip: Path) -> None:
    rate_hz = FPS / 3
    harness = NodeHarness(CameraSource, {"source": str(clip), "loop": True, "rate_hz": rate_hz})
    frames: list[Frame] = []
    try:
        for _ in range(MAX_READS):
            frames += [o.message for o in harness.tick()]
            if len(frames) >= 3:
                break
    finally:
        harness.close()
    min_gap_ns = 1e9 / rate_hz * (1 - RATE_TOLERANCE)
    assert len(frames) >= 3
    assert all(b.stamp_ns - a.stamp_ns >= min_gap_ns for a, b in zip(frames, frames[1:]))
    assert harness.metrics["counters"]["rate_skipped"] > 0


def test_close_stops_the_capture_thread(clip: Path) -> None:
    camera = LiveCamera(str(clip), loop=True).open()
    assert read_until(camera, lambda got: len(got) >= 1)
    assert capture_threads(camera)
    camera.close()
    assert not capture_threads(camera)
    assert camera.ended and camera.read(0.0) is None
    camera.close()  # twice is fine
