"""VideoIngest: a video file, stream or camera as a source of `Frame`s with exact times.

Decoding runs ahead of the graph in a background thread that fills a bounded queue of frame batches,
so decode overlaps the work downstream while memory stays bounded (queue_batches × batch_size
frames); each tick emits one frame. A live source never waits for a slow graph: when its queue is
full the oldest batch is dropped (counted as `dropped_frames`). A video that breaks off mid-way ends
the stream after every frame before the break, with the error logged and counted (`decode_errors`)
rather than crashing the graph; a file that is not there is an error at setup. Decoding itself is
`nodes.video_decode`, which other nodes call directly.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nodes.video_decode import (BACKEND_AUTO, BACKEND_AV, BACKEND_DECORD, DEFAULT_BATCH, LIVE_READ_TIMEOUT_S,
                                FrameBatch, count_frames, is_live, iter_batches, local_path)
from pipeline.messages import Frame
from pipeline.node import Node

DEFAULT_QUEUE_BATCHES = 4
PROGRESS_UNIT = "frames"
POLL_S = 0.05  # how long a tick waits for the decoder before reporting "nothing yet"
PUT_POLL_S = 0.05  # how often a blocked decoder thread checks whether it should stop
JOIN_TIMEOUT_S = 5.0


class VideoIngestParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a video file, a URL (rtsp://, http://, ...) or a device (/dev/video0)")
    backend: Literal["auto", "decord", "av"] = BACKEND_AUTO  # auto: decord for files, PyAV for streams
    fps: float | None = Field(None, gt=0, description="resample to this rate (nearest frame); None: every frame")
    start_s: float = Field(0.0, ge=0)
    end_s: float | None = Field(None, gt=0, description="frames from this time on are not read")
    max_side: int | None = Field(None, ge=8, description="shrink so the longer side is at most this")
    batch_size: int = Field(DEFAULT_BATCH, ge=1, description="frames decoded per batch (files)")
    queue_batches: int = Field(DEFAULT_QUEUE_BATCHES, ge=1, description="decoded batches waiting at most")
    av_format: str | None = Field(None, description="PyAV input format for devices, e.g. v4l2")
    av_options: dict[str, str] = Field(default_factory=dict, description="PyAV input options, e.g. rtsp_transport")
    timeout_s: float = Field(LIVE_READ_TIMEOUT_S, gt=0, description="a live source silent this long is an error")
    frame_id: str = "camera"

    @model_validator(mode="after")
    def _window(self) -> "VideoIngestParams":
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if self.backend == BACKEND_DECORD and (is_live(self.path) or self.av_format is not None):
            raise ValueError(f"decord reads local files only; use backend {BACKEND_AV!r} for {self.path}")
        return self


@dataclass
class StreamEnd:
    """The decoder thread's last word: None when the video ended, else why it stopped."""

    error: BaseException | None = None


class Readahead:
    """Runs a batch iterator in a thread, ahead of its consumer, through a queue of at most `size`
    batches. The iterator is created, used and closed in that thread (decoders are not shared)."""

    def __init__(self, make_batches: Callable[[], Iterator[FrameBatch]], size: int, *, drop_oldest: bool = False,
                 name: str = "readahead"):
        self._make_batches = make_batches
        self.queue: queue.Queue[FrameBatch | StreamEnd] = queue.Queue(maxsize=size)
        self.drop_oldest = drop_oldest
        self.produced = 0  # batches handed over
        self.dropped_frames = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def get(self, timeout_s: float) -> FrameBatch | StreamEnd | None:
        """The next batch or the end; None if nothing came within `timeout_s`."""
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop the thread (it sees the request between batches) and wait for it."""
        self._stop.set()
        self._drain()
        if self.thread.is_alive():
            self.thread.join(JOIN_TIMEOUT_S)

    def _drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def _put(self, item: FrameBatch | StreamEnd) -> bool:
        """Hand `item` over, waiting while the queue is full; False if asked to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=PUT_POLL_S)
            except queue.Full:
                if self.drop_oldest:
                    try:
                        old = self.queue.get_nowait()
                        self.dropped_frames += len(old) if isinstance(old, FrameBatch) else 0
                    except queue.Empty:
                        pass
                continue
            self.produced += isinstance(item, FrameBatch)
            return True
        return False

    def _run(self) -> None:
        batches = self._make_batches()
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            self._put(StreamEnd())
        except Exception as exc:  # reported by the consumer, which owns the logging and the counters
            self._put(StreamEnd(exc))
        finally:
            batches.close()


class VideoIngest(Node):
    """Frames of a video with their index in it and their presentation time (`pts_s`)."""

    Params = VideoIngestParams
    outputs = {"frame": Frame}

    def setup(self) -> None:
        p = self.params
        live = is_live(p.path) or p.av_format is not None
        if not live:
            local_path(p.path)  # a missing file fails here, naming it

        def batches() -> Iterator[FrameBatch]:
            return iter_batches(p.path, fps=p.fps, start_s=p.start_s, end_s=p.end_s, max_side=p.max_side,
                                backend=p.backend, batch_size=p.batch_size, av_format=p.av_format,
                                av_options=p.av_options, timeout_s=p.timeout_s)

        self.total_frames = None if live else count_frames(p.path, p.fps, p.start_s, p.end_s)
        self.readahead = Readahead(batches, p.queue_batches, drop_oldest=live, name=f"video-ingest-{self.node_id}")
        self.batch: FrameBatch | None = None
        self.position = 0
        self.ended = False
        self.readahead.start()

    def tick(self) -> bool | None:
        if self.ended:
            return False
        while self.batch is None or self.position >= len(self.batch):
            item = self.readahead.get(POLL_S)
            if item is None:
                return None  # the decoder is behind: nothing to emit yet
            if isinstance(item, StreamEnd):
                self._end(item.error)
                return False
            self.batch, self.position = item, 0
            self._report_drops()
        i = self.position
        self.position += 1
        self.emit("frame", Frame(image=self.batch.images[i], index=self.batch.indices[i],
                                 pts_s=self.batch.pts_s[i], frame_id=self.params.frame_id))
        self.count("frames")
        self.report_progress(self.counters["frames"], self.total_frames, PROGRESS_UNIT)
        return True

    def _report_drops(self) -> None:
        if self.readahead.dropped_frames:
            self.counters["dropped_frames"] = self.readahead.dropped_frames

    def _end(self, error: BaseException | None) -> None:
        self.ended = True
        self._report_drops()
        if error is None:
            self.log.info("%s: %d frames", self.params.path, self.counters["frames"])
            return
        self.count("decode_errors")
        where = "" if self.params.path in str(error) else f"{self.params.path}: "
        self.log.error("video ended early after %d frames: %s%s", self.counters["frames"], where, error)

    def close(self) -> None:
        readahead = getattr(self, "readahead", None)
        if readahead is not None:
            readahead.close()
