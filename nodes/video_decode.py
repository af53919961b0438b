"""Video files and streams as frames with exact timestamps: the function API behind `VideoIngest`.

decord reads local files with random access (only the frames asked for are decoded); PyAV streams
files, URLs (rtsp, http, ...) and devices (v4l2). Timestamps are the stream's pts × time_base, never
index / fps guesses, so variable-frame-rate video is timed right. For a file, an index of every
frame's pts is read first (demuxing only, no decoding): it numbers the frames in presentation order,
so both backends give the same indices and pick the same frames when resampling. A file that breaks
off (truncated, corrupt) yields every frame before the break, then raises `VideoDecodeError` naming
the file and the frame and time of the break. decord cannot open a file that does not reach its end,
so such files (and any decord cannot index consistently) are streamed with PyAV instead, with a warning.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from robot.camera import FILE_URL, Pixels, is_live  # shared with the live camera

BACKEND_AUTO, BACKEND_DECORD, BACKEND_AV = "auto", "decord", "av"
BACKENDS = (BACKEND_AUTO, BACKEND_DECORD, BACKEND_AV)
DEFAULT_BATCH = 16
LIVE_READ_TIMEOUT_S = 10.0  # a live source silent this long is an error, not a hang

log = logging.getLogger("groundloop.video")


class VideoDecodeError(RuntimeError):
    """Decoding stopped early; every frame before `frame_index` was delivered."""

    def __init__(self, source: str, frame_index: int, time_s: float, cause: str):
        super().__init__(f"{source}: decoding failed at frame {frame_index} (t={time_s:.3f} s): {cause}")
        self.source, self.frame_index, self.time_s = source, frame_index, time_s


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int
    fps: float  # the stream's average rate
    duration_s: float
    width: int
    height: int


@dataclass
class FrameBatch:
    """Consecutive output frames: index in the video, presentation time, RGB image (H, W, 3) uint8."""

    indices: list[int]
    pts_s: list[float]
    images: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class FrameIndex:
    """Every frame's pts in presentation order, from the container's packets."""

    pts: np.ndarray  # (N,) int64, sorted
    time_base: Fraction
    declared: int  # the frame count the container states (0: unknown)
    info: VideoInfo
    demux_error: str | None = None  # why reading the packets stopped before the end

    @cached_property
    def pts_s(self) -> np.ndarray:
        return seconds(self.pts, self.time_base)

    def time_at(self, i: int) -> float:
        """The time of frame i, or of the last frame for a position past the end."""
        return float(self.pts_s[min(i, len(self.pts) - 1)]) if len(self.pts) else 0.0

    @property
    def cut_short(self) -> str | None:
        """Why the file holds fewer frames than it declares (or could not be read to its end), or None."""
        if self.demux_error is not None:
            return f"reading the file stopped after {len(self.pts)} frames: {self.demux_error}"
        if self.declared <= len(self.pts):
            return None
        return f"the file ends after {len(self.pts)} of the {self.declared} frames it declares (truncated?)"


def seconds(pts: Any, time_base: Fraction) -> Any:
    """pts × time_base as float64: the same double for numpy arrays and Python ints."""
    return pts * time_base.numerator / time_base.denominator


def local_path(source: str) -> Path:
    """The file a local source names; a clear error if there is none."""
    path = Path(source.removeprefix(FILE_URL))
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    return path


def read_index(source: str) -> FrameIndex:
    """Demux (no decoding) every packet of the first video stream of a local file."""
    import av

    path = local_path(source)
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoDecodeError(source, 0, 0.0, f"cannot open it as a video ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoDecodeError(source, 0, 0.0, "it has no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 1)
        stamps, end, demux_error = [], 0, None
        try:
            for packet in container.demux(stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None or packet.size == 0:
                    continue  # the demuxer's flush packet
                stamps.append(pts)
                end = max(end, pts + (packet.duration or 0))
        except av.FFmpegError as exc:
            demux_error = str(exc)
        pts_arr = np.sort(np.asarray(stamps, dtype=np.int64))
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        first = int(pts_arr[0]) if len(pts_arr) else 0
        info = VideoInfo(len(pts_arr), rate, float(seconds(end - first, time_base)),
                         stream.codec_context.width, stream.codec_context.height)
        return FrameIndex(pts_arr, time_base, stream.frames or 0, info, demux_error)


def probe_video(source: str) -> VideoInfo:
    """Frame count (of frames actually present), average rate, duration and size of a local file."""
    return read_index(source).info


class NearestSampler:
    """Resampling to `fps`: for each target time start_s + k / fps, the frame nearest to it (the
    earlier on a tie), each frame at most once; frames before start_s or from end_s on are never
    picked. Fed frames in presentation order, it decides as soon as it has seen a frame past the
    target, so files and live streams are resampled by the same rule. fps None keeps every frame."""

    def __init__(self, fps: float | None = None, start_s: float = 0.0, end_s: float | None = None):
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps, self.start_s, self.end_s = fps, start_s, end_s
        self.k = 0
        self.finished = False  # a frame at or after end_s was seen
        self._prev: list[Any] | None = None  # [key, pts_s, emitted]

    def offer(self, key: Any, pts_s: float) -> list[Any]:
        """The keys to emit now, in order, after seeing frame `key` at `pts_s`."""
        if self.end_s is not None and pts_s >= self.end_s:
            self.finished = True
        if pts_s < self.start_s or self.finished:
            return []
        if self.fps is None:
            return [key]
        out: list[Any] = []
        current = [key, pts_s, False]
        while (target := self.start_s + self.k / self.fps) <= pts_s:
            prev = self._prev
            chosen = prev if prev is not None and target - prev[1] <= pts_s - target else current
            if not chosen[2]:
                out.append(chosen[0])
                chosen[2] = True
            self.k += 1
        self._prev = current
        return out


def select_frames(pts_s: np.ndarray, fps: float | None = None, start_s: float = 0.0,
                  end_s: float | None = None) -> np.ndarray:
    """Indices of the frames a `NearestSampler` picks from these presentation times."""
    sampler = NearestSampler(fps, start_s, end_s)
    picked = [key for i, t in enumerate(pts_s.tolist()) for key in sampler.offer(i, t)]
    return np.asarray(picked, dtype=np.int64)


def _open_decord(path: Path, index: FrameIndex) -> tuple[Any, str]:
    """A decord reader whose frame i is index frame i, or None and why not."""
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (decord.DECORDError, RuntimeError) as exc:
        return None, f"decord cannot open it ({str(exc).splitlines()[0][:200]})"
    if len(reader) != len(index.pts):
        return None, f"decord counts {len(reader)} frames, the container {len(index.pts)}"
    probe = np.unique(np.linspace(0, len(reader) - 1, num=min(len(reader), 16)).astype(np.int64))
    theirs = reader.get_frame_timestamp(probe)[:, 0].astype(np.float64)
    ours = index.pts_s[probe]
    if len(probe) and not np.allclose(theirs - theirs[0], ours - ours[0], atol=1e-3):
        return None, "decord's frame times disagree with the container's"
    return reader, ""


def _decord_batches(source: str, path: Path, reader: Any, index: FrameIndex, selected: np.ndarray,
                    batch_size: int, max_side: int | None) -> Iterator[FrameBatch]:
    """Random access to the selected frames; at a batch decord fails on, PyAV takes over (it
    salvages every frame up to the bad one and names it, or gets past a decord bug)."""
    import decord

    pts_s = index.pts_s
    pixels = Pixels(max_side)
    for start in range(0, len(selected), batch_size):
        chunk = selected[start: start + batch_size].tolist()
        try:
            images = list(reader.get_batch(chunk).asnumpy())
        except decord.DECORDError as exc:
            log.warning("%s: decord failed on frames %d-%d (%s); PyAV takes over", source, chunk[0], chunk[-1],
                        str(exc).splitlines()[-1][:200])
            yield from _av_file_batches(source, path, index, selected[start:], batch_size, max_side)
            return
        yield FrameBatch(chunk, [float(pts_s[i]) for i in chunk], [pixels.fit(image) for image in images])


def _decoded(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's frames; on a decoding error, first the frames the decoder still holds, then the error."""
    import av

    try:
        yield from container.decode(stream)
    except av.FFmpegError:
        try:
            yield from stream.codec_context.decode(None)
        except av.FFmpegError:
            pass  # nothing more to salvage; the first error is the one to report
        raise


def _av_file_batches(source: str, path: Path, index: FrameIndex, selected: np.ndarray, batch_size: int,
                     max_side: int | None) -> Iterator[FrameBatch]:
    """Decode in order from the keyframe before the first selected frame; keep the selected ones."""
    import av

    wanted = set(selected.tolist())
    last_wanted = int(selected[-1])
    pts_s = index.pts_s
    pixels = Pixels(max_side)
    batch = FrameBatch([], [], [])
    failure: VideoDecodeError | None = None
    done = -1  # the last index decoded
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if selected[0] > 0:
            container.seek(int(index.pts[selected[0]]), stream=stream, backward=True)
        try:
            for frame in _decoded(container, stream):
                i = int(np.searchsorted(index.pts, frame.pts)) if frame.pts is not None else len(index.pts)
                if i >= len(index.pts) or index.pts[i] != frame.pts:
                    continue  # not a frame the index knows (cannot be numbered)
                done = max(done, i)
                if i in wanted:
                    batch.indices.append(i)
                    batch.pts_s.append(float(pts_s[i]))
                    batch.images.append(pixels.rgb(frame))
                    wanted.discard(i)
                if len(batch) == batch_size:
                    yield batch
                    batch = FrameBatch([], [], [])
                if i >= last_wanted:
                    break
        except av.FFmpegError as exc:
            failure = VideoDecodeError(source, done + 1, index.time_at(done + 1), str(exc))
    if batch:
        yield batch
    if failure is None and wanted:
        first = min(wanted)
        cause = index.cut_short or "the decoder never produced this frame"
        failure = VideoDecodeError(source, first, float(pts_s[first]), cause)
    if failure is not None:
        raise failure


def _av_live_batches(source: str, sampler: NearestSampler, max_side: int | None, av_format: str | None,
                     av_options: dict[str, str] | None, timeout_s: float) -> Iterator[FrameBatch]:
    """A stream read in order; frames numbered from 0 as they arrive, each yielded at once."""
    import av

    count = 0
    last_s = 0.0
    pixels = Pixels(max_side)
    try:
        with av.open(source, format=av_format, options=av_options or {}, timeout=timeout_s) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0) or None
            for frame in container.decode(stream):
                t = float(seconds(frame.pts, frame.time_base)) if frame.pts is not None and frame.time_base else (
                    count / rate if rate else 0.0)
                last_s = t
                for i, ts, picked in sampler.offer((count, t, frame), t):
                    yield FrameBatch([i], [ts], [pixels.rgb(picked)])
                count += 1
                if sampler.finished:
                    return
    except av.FFmpegError as exc:
        raise VideoDecodeError(source, count, last_s, str(exc)) from None


def count_frames(source: str, fps: float | None = None, start_s: float = 0.0, end_s: float | None = None) -> int | None:
    """How many frames `iter_batches` will yield for a local file (a progress bar's total); None for a
    live stream, whose end nobody knows, and for a file that does not demux (decoding reports why)."""
    if is_live(source):
        return None
    try:
        return len(select_frames(read_index(source).pts_s, fps, start_s, end_s))
    except VideoDecodeError:
        return None


def iter_batches(source: str, *, fps: float | None = None, start_s: float = 0.0, end_s: float | None = None,
                 max_side: int | None = None, backend: str = BACKEND_AUTO, batch_size: int = DEFAULT_BATCH,
                 av_format: str | None = None, av_options: dict[str, str] | None = None,
                 timeout_s: float = LIVE_READ_TIMEOUT_S) -> Iterator[FrameBatch]:
    """Frames of `source` in batches (a live stream's one by one), resampled to `fps` within
    [start_s, end_s). `backend` auto: decord for local files, PyAV for streams and devices.
    `av_format`/`av_options` go to av.open for devices and streams (e.g. "v4l2", {"rtsp_transport": "tcp"})."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if is_live(source) or av_format is not None:
        if backend == BACKEND_DECORD:
            raise ValueError(f"{source}: decord reads local files only; use backend {BACKEND_AV!r} or {BACKEND_AUTO!r}")
        sampler = NearestSampler(fps, start_s, end_s)
        yield from _av_live_batches(source, sampler, max_side, av_format, av_options, timeout_s)
        return
    path = local_path(source)
    index = read_index(source)
    selected = select_frames(index.pts_s, fps, start_s, end_s)
    if len(selected):
        reader, why_not = _open_decord(path, index) if backend != BACKEND_AV else (None, "")
        if reader is not None:
            yield from _decord_batches(source, path, reader, index, selected, batch_size, max_side)
        else:
            if why_not:
                log.warning("%s: %s; decoding it with PyAV instead", source, why_not)
            yield from _av_file_batches(source, path, index, selected, batch_size, max_side)
    end = len(index.pts)
    if index.cut_short and (end_s is None or index.time_at(end) < end_s):
        raise VideoDecodeError(source, end, index.time_at(end), index.cut_short)


def iter_frames(source: str, **kwargs: Any) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, pts_s, image) for each output frame; the same arguments as `iter_batches`."""
    for batch in iter_batches(source, **kwargs):
        yield from zip(batch.indices, batch.pts_s, batch.images)
