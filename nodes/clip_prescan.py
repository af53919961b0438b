"""ClipPrescan: every sampled frame of a video scored by CLIP against the question — A.I.R.'s first
stage (reference/papers.md §1: frames at 1 fps, query-frame cosine similarity, cached).

With the multiple-choice `options` given, a frame's score is its best cosine over the question alone
and the question followed by each one option (`query_texts`, `query_scores`). NOT IN THE PAPER, which
scores frames against "the query" without saying what that text is for a multiple-choice question. A
CLIP caption reads as a conjunction (every thing it names should show: `nodes.clip.data`), so the
question with all four options appended would ask for frames showing every option at once, which
hardly ever happen; the question alone names nothing for "which of these happened first?". The best
over one option at a time asks for a frame fitting the question and any one option. On the frame
selection benchmark's 544 questions it raised A.I.R.'s QA lead over uniform from +1.8 / +3.1 to +2.4 /
+5.5 points at B = 8 / 16 (README; `--question-only-query` gives the question-only figures).

Two ways in:
- `video` (a local file): the node is a source. Frames are decoded in a background thread
  (`video_ingest.Readahead` over `video_decode.iter_batches`, resampled to `fps`) while the previous
  batch is embedded, so decoding overlaps the CLIP pass. When the video ends, one `FrameScores`
  for the whole video goes out. The frame embeddings are cached by (video content, model, fps)
  (`nodes.clip.cache`): a second question about the same video costs no CLIP pass, only the text.
  A video that breaks off mid-way is scored up to the break (counted in `decode_errors`) and not cached.
- the `frame` input (e.g. from VideoIngest): frames are embedded `batch_size` at a time and each
  batch's scores go out as one `FrameScores`; a partial batch goes out once the input has been silent
  for `FLUSH_AFTER_S`, or when the stream ends (`on_inputs_ended`), so no frame goes unscored.
  `fps` does not apply (the upstream samples), and there is no cache: no file to key it by.

`model: {serve: NAME}` calls a running CLIP deployment (`groundloop serve`, nodes/serving) instead of
loading the model: a video's batches then go out several at a time (`max_in_flight`), a batch whose
replica dies is sent again (counted in `serve_retries`), and the rows are put together in frame order.

Counters: `frames_embedded`, `cache_hits`, `cache_misses`, `decode_errors`, `serve_retries`.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.clip.cache import EmbeddingCache, FrameEmbeddings, cache_key, file_digest
from nodes.clip.embedder import BACKEND_TORCH, DEVICE_AUTO, ClipEmbedder, load_embedder
from nodes.clip.model import DEFAULT_MODEL_DIR
from nodes.serving.config import ServeRef
from nodes.video_decode import BACKEND_AUTO, FrameBatch, count_frames, iter_batches, local_path
from nodes.video_ingest import Readahead, StreamEnd
from pipeline.messages import Frame, FrameScores
from pipeline.node import Node

if TYPE_CHECKING:
    from nodes.serving.client import PendingEmbeddings, ServedClip

DEFAULT_FPS = 1.0  # A.I.R.'s prescan rate
DEFAULT_BATCH = 32
DEFAULT_CACHE_DIR = "runs/clip_cache"
DEFAULT_QUEUE_BATCHES = 2  # decoded batches waiting for the embedder
PROGRESS_UNIT = "frames"
FLUSH_AFTER_S = 1.0  # frame input: a partial batch is scored after this much silence
POLL_S = 0.05  # how long a tick waits for the decoder before reporting "nothing yet"


class ClipPrescanParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, description="the query every frame is scored against")
    options: list[str] = Field(default_factory=list, description="the multiple-choice options: a frame scores its "
                               "best cosine over the question alone and followed by each option (query_texts)")
    video: str | None = Field(None, description="a local video file; None: score frames from the `frame` input")
    model: str | ServeRef = Field(DEFAULT_MODEL_DIR, description="a CLIP directory: ours, a local HF checkpoint, or an "
                                  "ONNX export; or {serve: NAME}, a running deployment (whose own backend, device "
                                  "and threads then apply)")
    backend: Literal["torch", "onnx"] = BACKEND_TORCH
    device: str = Field(DEVICE_AUTO, description="auto: CUDA when present, else CPU")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for the CLIP pass (None: the runtime's default)")
    fps: float | None = Field(DEFAULT_FPS, gt=0, description="video: sample at this rate (None: every frame)")
    batch_size: int = Field(DEFAULT_BATCH, ge=1, description="frames per CLIP pass (and per decoded batch)")
    cache_dir: str | None = Field(DEFAULT_CACHE_DIR, description="frame-embedding cache (None: no cache)")
    decode_backend: Literal["auto", "decord", "av"] = BACKEND_AUTO
    queue_batches: int = Field(DEFAULT_QUEUE_BATCHES, ge=1, description="decoded batches waiting at most")
    frame_id: str = ""


def query_texts(question: str, options: Sequence[str] = ()) -> list[str]:
    """The texts a frame is scored against: the question, then the question followed by each option."""
    return [question, *(f"{question} {option}" for option in options)]


def query_scores(frame_embeddings: np.ndarray, query_embeddings: np.ndarray) -> np.ndarray:
    """(N,) float32: each frame's highest cosine similarity to any of the queries (unit-norm embeddings)."""
    return (frame_embeddings @ query_embeddings.T).max(axis=1).astype(np.float32)  # (N, D) @ (D, Q) → (N, Q) → (N,)


class ClipPrescan(Node):
    """Cosine similarity of each sampled frame to the question (and options), as `FrameScores`."""

    Params = ClipPrescanParams
    inputs = {"frame": Frame}
    outputs = {"scores": FrameScores}
    input_timeouts = {"frame": FLUSH_AFTER_S}

    def setup(self) -> None:
        p = self.params
        self.served = isinstance(p.model, ServeRef)
        self.embedder: ClipEmbedder | ServedClip = self._load_embedder()
        self.queries = self.embedder.embed_texts(query_texts(p.question, p.options))  # (Q, D)
        self.pending: list[Frame] = []
        self.readahead: Readahead | None = None
        self.cached: FrameEmbeddings | None = None
        self.done = p.video is None  # frame input only: nothing to tick
        self.indices: list[int] = []
        self.times: list[float] = []
        self.embeddings: list[np.ndarray | PendingEmbeddings] = []  # (b, D) per batch, or its request
        self.cache: EmbeddingCache | None = None
        self.total_frames: int | None = None  # of the video, for the progress bar
        if p.video is None:
            return
        path = local_path(p.video)  # a missing file fails here, naming it
        if p.cache_dir is not None:
            self.cache = EmbeddingCache(p.cache_dir)
            self.key = cache_key(file_digest(path), self.embedder.identity, p.fps)
            self.cached = self.cache.load(self.key)
        if self.cached is None:
            self._start_decoding()

    def _load_embedder(self) -> ClipEmbedder | ServedClip:
        p = self.params
        if self.served:
            from nodes.serving.client import ServedClip

            return ServedClip(p.model, on_retry=lambda: self.count("serve_retries"))
        return load_embedder(p.model, p.backend, p.device, p.num_threads)

    def _start_decoding(self) -> None:
        p = self.params

        def batches() -> Iterator[FrameBatch]:
            return iter_batches(p.video, fps=p.fps, backend=p.decode_backend, batch_size=p.batch_size)

        if self.cache is not None:
            self.count("cache_misses")
        self.total_frames = count_frames(p.video, p.fps)
        self.readahead = Readahead(batches, p.queue_batches, name=f"clip-prescan-{self.node_id}")
        self.readahead.start()

    # ---- video: a source ---------------------------------------------------------------------------

    def tick(self) -> bool | None:
        if self.done:
            return False
        if self.cached is not None:
            self.count("cache_hits")
            self._emit_scores(self.cached)
            self.done = True
            return True
        item = self.readahead.get(POLL_S)
        if item is None:
            return None  # the decoder is behind
        if isinstance(item, StreamEnd):
            self._finish(item.error)
            return True
        self._embed(item.indices, item.pts_s, np.stack(item.images))
        return True

    def _embed(self, indices: list[int], times_s: list[float], images: np.ndarray) -> None:
        """Embed (b, H, W, 3) uint8 frames and keep their embeddings for the end of the video (a served
        model's: the request, answered by the time the video ends)."""
        if self.served:
            self.embeddings.append(self.embedder.submit_images(images, keys=indices))
        else:
            self.embeddings.append(self.embedder.embed_images(images))  # (b, D)
        self.indices += indices
        self.times += times_s
        self.count("frames_embedded", len(indices))
        self.report_progress(len(self.indices), self.total_frames, PROGRESS_UNIT)

    def _collected(self) -> FrameEmbeddings:
        parts = [e if isinstance(e, np.ndarray) else e.result() for e in self.embeddings]
        embeddings = np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), np.float32)
        return FrameEmbeddings(np.asarray(self.indices, np.int64), np.asarray(self.times, np.float64), embeddings)

    def _finish(self, error: BaseException | None) -> None:
        frames = self._collected()
        if error is not None:
            self.count("decode_errors")
            self.log.error("%s: scoring the %d frames before the break (not cached): %s", self.params.video,
                           len(frames.frame_indices), error)
        elif self.cache is not None:
            self.cache.save(self.key, frames, video=self.params.video, model=self.embedder.identity, fps=self.params.fps)
        self._emit_scores(frames)
        self.done = True

    def _emit_scores(self, frames: FrameEmbeddings, stamp_ns: int | None = None) -> None:
        scores = query_scores(frames.embeddings, self.queries)  # (N,) cosine
        extra = {} if stamp_ns is None else {"stamp_ns": stamp_ns}
        self.emit("scores", FrameScores(frame_indices=frames.frame_indices, times_s=frames.times_s, scores=scores,
                                        query=self.params.question, frame_id=self.params.frame_id, **extra))

    # ---- frames from upstream ------------------------------------------------------------------------

    def on_frame(self, msg: Frame) -> None:
        self.pending.append(msg)
        if len(self.pending) >= self.params.batch_size:
            self._flush()

    def on_timeout(self, port: str) -> None:
        self._flush()

    def on_inputs_ended(self) -> None:
        self._flush()

    def _flush(self) -> None:
        """Embed the pending frames, if any, and send their scores (capture time: the newest frame's)."""
        frames, self.pending = self.pending, []
        if not frames:
            return
        embeddings = self.embedder.embed_images(np.stack([f.image for f in frames]))  # (b, D)
        self.count("frames_embedded", len(frames))
        self._emit_scores(FrameEmbeddings(np.array([f.index for f in frames]), np.array([f.pts_s for f in frames]),
                                          embeddings), stamp_ns=max(f.stamp_ns for f in frames))

    def close(self) -> None:
        if getattr(self, "readahead", None) is not None:
            self.readahead.close()
        if getattr(self, "pending", None):
            self.log.warning("closed with %d frames not yet scored (the graph stopped before its stream ended)", len(self.pending))
