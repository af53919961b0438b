"""LiveCamera: a camera read through PyAV in a thread, always holding its newest frames.

A source is a V4L2 device (/dev/videoN), a network stream (rtsp://, http://, udp://, tcp://, ...) or a
video file (optionally looped and played at its own pace, for tests and demos). Each frame is stamped
with the monotonic clock when it was decoded (its capture time for the graph) and keeps the stream's
pts when the stream has one. A live camera must never wait for a slow consumer, so frames go into a
small bounded buffer that drops the oldest. A stream that drops (error, silence longer than
`timeout_s`, or its end) is reopened with exponential backoff; drops and reconnects are counted, and a
source that cannot be opened within `max_retries` is a `CameraError` that names it.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

V4L2_FORMAT = "v4l2"
VIDEO_DEVICE_PREFIX = "/dev/video"  # opened with V4L2_FORMAT unless another format is given
DEVICE_DIR = "/dev/"
URL_MARK = "://"
FILE_URL = "file://"
RESIZE_INTERPOLATION = "AREA"
DEFAULT_TIMEOUT_S = 5.0  # a stream silent this long has dropped
DEFAULT_MAX_RETRIES = 10  # failed opens in a row before giving up (None: never give up)
DEFAULT_BACKOFF_S = 0.1  # the first wait before reopening; doubles with each failure
DEFAULT_BACKOFF_MAX_S = 5.0
DEFAULT_BUFFER_FRAMES = 1  # keep only the newest frame
JOIN_MARGIN_S = 2.0  # beyond timeout_s, how long close() waits for the thread
NS_PER_S = 1_000_000_000

log = logging.getLogger("groundloop.camera")


class CameraError(RuntimeError):
    """The camera gave up: it could not be (re)opened within its retries, or it holds no video."""


class Pixels:
    """RGB conversion and shrinking (longer side at most `max_side`, area averaging), each through one
    swscale context kept across frames: PyAV otherwise builds one per frame, ten times the cost of
    the conversion itself. One per decoding loop (it is not thread-safe)."""

    def __init__(self, max_side: int | None = None):
        from av.video.reformatter import VideoReformatter

        self.max_side = max_side
        self._to_rgb, self._shrink = VideoReformatter(), VideoReformatter()

    def rgb(self, frame: Any) -> np.ndarray:
        """A decoded av.VideoFrame as (H, W, 3) uint8, shrunk if need be."""
        return self.fit(self._to_rgb.reformat(frame, format="rgb24").to_ndarray())

    def fit(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.max_side is None or max(height, width) <= self.max_side:
            return image
        import av

        scale = self.max_side / max(height, width)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        return self._shrink.reformat(frame, width=max(1, round(width * scale)), height=max(1, round(height * scale)),
                                     interpolation=RESIZE_INTERPOLATION).to_ndarray()


@dataclass(frozen=True)
class CapturedFrame:
    """One decoded frame: `index` counts every frame captured since open (across reconnects and
    loops), `connection` which opening of the source it came from (0 first)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    index: int
    capture_ns: int  # time.monotonic_ns() when it was decoded
    pts_s: float | None  # the stream's presentation time, when it has one
    connection: int


def is_live(source: str) -> bool:
    """A URL or a device: read it as a stream, in order."""
    return (URL_MARK in source and not source.startswith(FILE_URL)) or source.startswith(DEVICE_DIR)


class _Outcome(enum.Enum):
    STOPPED = "stopped"  # close() was called
    ENDED = "ended"  # a file reached its end
    DROPPED = "dropped"  # a stream failed, went silent or ended


class LiveCamera:
    """A camera source read in a background thread; `read()` hands out its newest frames."""

    def __init__(self, source: str, *, av_format: str | None = None, av_options: dict[str, str] | None = None,
                 loop: bool = False, realtime: bool = True, max_side: int | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int | None = DEFAULT_MAX_RETRIES,
                 backoff_s: float = DEFAULT_BACKOFF_S, backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                 buffer_frames: int = DEFAULT_BUFFER_FRAMES):
        if buffer_frames < 1:
            raise ValueError(f"buffer_frames must be at least 1, got {buffer_frames}")
        if timeout_s <= 0 or backoff_s <= 0 or backoff_max_s < backoff_s:
            raise ValueError(f"need timeout_s > 0 and 0 < backoff_s <= backoff_max_s, got {timeout_s}, "
                             f"{backoff_s}, {backoff_max_s}")
        self.source = source
        if av_format is None and source.startswith(VIDEO_DEVICE_PREFIX):
            av_format = V4L2_FORMAT
        self.av_format, self.av_options = av_format, dict(av_options or {})
        self.is_file = av_format is None and not is_live(source)
        self.loop, self.realtime, self.max_side = loop, realtime, max_side
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.frames = 0  # captured
        self.skipped = 0  # pushed out of the buffer unread by newer frames
        self.drops = 0  # the stream failed, went silent or ended
        self.reconnects = 0  # reopened after a drop
        self._buffer: deque[CapturedFrame] = deque(maxlen=buffer_frames)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._finished = False  # the thread is done (see _error for why)
        self._error: CameraError | None = None
        self._connection = -1
        self._thread: threading.Thread | None = None

    # ---- the consumer's side --------------------------------------------------------------------

    def open(self) -> "LiveCamera":
        """Start capturing; a file that is not there fails here, naming it."""
        if self._thread is not None:
            raise RuntimeError(f"camera {self.source} is already open")
        if self.is_file and not Path(self.source.removeprefix(FILE_URL)).is_file():
            raise FileNotFoundError(f"camera file not found: {self.source}")
        self._thread = threading.Thread(target=self._run, name=f"camera {self.source}", daemon=True)
        self._thread.start()
        return self

    def read(self, timeout_s: float) -> CapturedFrame | None:
        """The oldest unread frame in the buffer (with the default buffer: the newest frame), or None if
        none came within `timeout_s` or the camera has ended. Raises `CameraError` once it gave up."""
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._finished, timeout_s)
            if self._buffer:
                return self._buffer.popleft()
            if self._error is not None:
                raise self._error
            return None

    @property
    def ended(self) -> bool:
        """Nothing more will come: a file ended, the camera was closed or it gave up."""
        with self._cond:
            return self._finished and not self._buffer

    def close(self) -> None:
        """Stop the thread and wait for it; safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(self.timeout_s + JOIN_MARGIN_S)
            if thread.is_alive():
                log.warning("camera %s: the capture thread did not stop within %.1f s", self.source,
                            self.timeout_s + JOIN_MARGIN_S)
        with self._cond:
            self._buffer.clear()
            self._finished = True
            self._cond.notify_all()

    def __enter__(self) -> "LiveCamera":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the capture thread ---------------------------------------------------------------------

    def _run(self) -> None:
        dropped = False
        try:
            while not self._stop.is_set():
                container = self._connect()
                if container is None:
                    return
                self._connection += 1
                if dropped:
                    self.reconnects += 1
                    log.info("camera %s: reconnected (%d reconnects)", self.source, self.reconnects)
                frames_before = self.frames
                with container:
                    outcome = self._pump(container)
                if outcome is _Outcome.ENDED and self.frames == frames_before:
                    raise CameraError(f"camera {self.source}: it holds no frames")
                if outcome is _Outcome.STOPPED or (outcome is _Outcome.ENDED and not self.loop):
                    return
                dropped = outcome is _Outcome.DROPPED
                if dropped:
                    self.drops += 1
                    log.warning("camera %s: stream dropped (%d drops); reconnecting", self.source, self.drops)
                    if self._stop.wait(self.backoff_s):
                        return
        except CameraError as exc:
            self._error = exc
        except Exception as exc:  # surfaced by read(), which the consumer calls anyway
            self._error = CameraError(f"camera {self.source}: {exc}")
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _connect(self) -> Any:
        """An open container, retrying with exponential backoff; None if asked to stop meanwhile."""
        import av

        failures = 0
        while not self._stop.is_set():
            try:
                return av.open(self.source, format=self.av_format, options=self.av_options,
                               timeout=(self.timeout_s, self.timeout_s))
            except (av.FFmpegError, OSError) as exc:
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    raise CameraError(f"camera {self.source}: cannot open it after {failures} attempts "
                                      f"({self.max_retries} retries): {exc}") from None
                delay = min(self.backoff_s * 2 ** (failures - 1), self.backoff_max_s)
                log.warning("camera %s: cannot open it (%s); retrying in %.2f s", self.source, exc, delay)
                self._stop.wait(delay)
        return None

    def _pump(self, container: Any) -> _Outcome:
        """Decode frames into the buffer until the stream stops, for whatever reason."""
        import av

        if not container.streams.video:
            raise CameraError(f"camera {self.source}: it has no video stream")
        stream = container.streams.video[0]
        pixels = Pixels(self.max_side)
        start: tuple[int, float] | None = None  # (monotonic ns, pts s) of the first frame: a file's pace
        try:
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return _Outcome.STOPPED
                pts_s = frame.time
                if self.is_file and self.realtime and pts_s is not None:
                    if start is None:
                        start = (time.monotonic_ns(), pts_s)
                    due_ns = start[0] + round((pts_s - start[1]) * NS_PER_S)
                    if self._stop.wait(max(0, due_ns - time.monotonic_ns()) / NS_PER_S):
                        return _Outcome.STOPPED
                capture_ns = time.monotonic_ns()
                self._push(pixels.rgb(frame), capture_ns, pts_s)
        except av.FFmpegError as exc:
            log.warning("camera %s: %s", self.source, exc)
            return _Outcome.STOPPED if self._stop.is_set() else _Outcome.DROPPED
        return _Outcome.ENDED if self.is_file else _Outcome.DROPPED

    def _push(self, image: np.ndarray, capture_ns: int, pts_s: float | None) -> None:
        captured = CapturedFrame(image, self.frames, capture_ns, pts_s, self._connection)
        with self._cond:
            if len(self._buffer) == self._buffer.maxlen:
                self.skipped += 1
            self._buffer.append(captured)
            self.frames += 1
            self._cond.notify_all()
