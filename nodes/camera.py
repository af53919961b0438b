"""CameraSource: a live camera (V4L2 device, network stream, or a looped file) as a source of `Frame`s.

The camera itself is `robot.camera.LiveCamera`, a bridge to hardware like the robots beside it: it
captures in its own thread, keeps only the newest frames, and reconnects on drops. This node turns its
frames into `Frame` messages stamped with their capture time, at the camera's rate or at most
`rate_hz`. `VideoIngest` is the other video source: it reads recordings and streams completely and in
order (every frame, or resampled by presentation time); this one is for the real-time loop, where a
late frame is worth less than the next one.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.messages import Frame
from pipeline.node import Node
from robot.camera import (DEFAULT_BACKOFF_MAX_S, DEFAULT_BACKOFF_S, DEFAULT_BUFFER_FRAMES, DEFAULT_MAX_RETRIES,
                          DEFAULT_TIMEOUT_S, CapturedFrame, LiveCamera)

POLL_S = 0.05  # how long a tick waits for a frame before reporting "nothing yet"
# a frame this fraction of a period early still counts as due, so capture jitter does not halve the
# rate (30 fps capped at 10 Hz keeps every third frame)
RATE_TOLERANCE = 0.1
NS_PER_S = 1_000_000_000


class CameraSourceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a device (/dev/video0), a URL (rtsp://, http://, udp://, tcp://) or a file")
    av_format: str | None = Field(None, description="PyAV input format; v4l2 is the default for /dev/video*")
    av_options: dict[str, str] = Field(default_factory=dict,
                                       description="PyAV input options, e.g. video_size, framerate, rtsp_transport")
    loop: bool = Field(False, description="a file: start over at its end (tests, demos)")
    rate_hz: float | None = Field(None, gt=0, description="emit at most this often; None: the camera's rate")
    max_side: int | None = Field(None, ge=8, description="shrink so the longer side is at most this")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="a stream silent this long has dropped")
    max_retries: int | None = Field(DEFAULT_MAX_RETRIES, ge=0,
                                    description="failed opens in a row before giving up; None: never")
    backoff_s: float = Field(DEFAULT_BACKOFF_S, gt=0, description="first wait before reopening; doubles")
    backoff_max_s: float = Field(DEFAULT_BACKOFF_MAX_S, gt=0, description="the longest wait before reopening")
    buffer_frames: int = Field(DEFAULT_BUFFER_FRAMES, ge=1, description="newest frames kept for the graph")
    frame_id: str = "camera"

    @model_validator(mode="after")
    def _backoff(self) -> "CameraSourceParams":
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be at least backoff_s ({self.backoff_s})")
        return self


class CameraSource(Node):
    """Frames of a live camera, stamped with their capture time; counts frames, drops and reconnects."""

    Params = CameraSourceParams
    outputs = {"frame": Frame}

    def setup(self) -> None:
        p = self.params
        self.camera = LiveCamera(p.source, av_format=p.av_format, av_options=p.av_options, loop=p.loop,
                                 max_side=p.max_side, timeout_s=p.timeout_s, max_retries=p.max_retries,
                                 backoff_s=p.backoff_s, backoff_max_s=p.backoff_max_s,
                                 buffer_frames=p.buffer_frames)
        self.period_ns = round(NS_PER_S / p.rate_hz) if p.rate_hz else 0
        self.last_emitted_ns: int | None = None
        self.camera.open()

    def tick(self) -> bool | None:
        try:
            captured = self.camera.read(POLL_S)  # a camera that gave up raises here, naming its source
        finally:
            self._report()
        if captured is None:
            return False if self.camera.ended else None
        if not self._due(captured):
            self.count("rate_skipped")
            return None
        self.last_emitted_ns = captured.capture_ns
        pts_s = captured.pts_s if captured.pts_s is not None else 0.0
        self.emit("frame", Frame(image=captured.image, stamp_ns=captured.capture_ns, frame_id=self.params.frame_id,
                                 index=captured.index, pts_s=pts_s))
        self.count("frames")
        return True

    def _due(self, captured: CapturedFrame) -> bool:
        """Whether the rate cap lets this frame out (by capture times, not by when ticks happen)."""
        if not self.period_ns or self.last_emitted_ns is None:
            return True
        return captured.capture_ns - self.last_emitted_ns >= self.period_ns * (1 - RATE_TOLERANCE)

    def _report(self) -> None:
        """The camera's own counts, as this node's metrics."""
        camera = self.camera
        self.counters.update(drops=camera.drops, reconnects=camera.reconnects, skipped_frames=camera.skipped)

    def close(self) -> None:
        camera = getattr(self, "camera", None)
        if camera is not None:
            camera.close()
