"""Raster drawing of a scene and its MP4: hard-edged sprites pasted with numpy, encoded with PyAV.

No antialiasing, so every pixel of a shape has exactly its palette colour before compression and a
test can read a shape's colour back at its centre. Drawing is vectorised over time: a shape that
stays put for a run of frames is pasted into all of them in one numpy assignment, which is what makes
a 10-minute video a matter of seconds. Every sprite fits inside its bounding radius, the radius the
scene's clearances are computed with.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from sim.shapes_world.scene import BACKGROUND, COLOURS, Scene

CHUNK_FRAMES = 256  # frames drawn per numpy batch
CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "18"}
KEYFRAME_EVERY_S = 2.0  # short GOPs keep random access (decord, seeking) cheap
MUXER_OPTIONS = {"movflags": "+faststart"}  # index first: streamable, and a truncated file still decodes
STAR_INNER = 0.45  # inner radius of the five-pointed star, as a fraction of the outer one


def _polygon(vertices: list[tuple[float, float]], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie inside the polygon (even-odd rule), vectorised over the grid."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _regular(n: int, radius: float, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(start + 2 * math.pi * k / n), radius * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


@lru_cache(maxsize=None)
def sprite(shape: str, radius: int) -> np.ndarray:
    """The (2r+1)×(2r+1) mask of `shape` centred in its box; its centre pixel is always inside."""
    y, x = np.mgrid[-radius: radius + 1, -radius: radius + 1].astype(np.float64)
    r = float(radius)
    if shape == "circle":
        mask = x * x + y * y <= r * r
    elif shape == "square":
        half = r / math.sqrt(2)
        mask = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":
        mask = _polygon(_regular(3, r), x, y)
    elif shape == "star":
        outer, inner = _regular(5, r), _regular(5, r * STAR_INNER, -math.pi / 2 + math.pi / 5)
        mask = _polygon([p for pair in zip(outer, inner) for p in pair], x, y)
    elif shape == "diamond":
        mask = _polygon([(0.0, -r), (0.7 * r, 0.0), (0.0, r), (-0.7 * r, 0.0)], x, y)
    elif shape == "cross":
        arm, reach = 0.3 * r, 0.95 * r
        mask = ((np.abs(x) <= arm) & (np.abs(y) <= reach)) | ((np.abs(y) <= arm) & (np.abs(x) <= reach))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask[radius, radius] = True
    return mask


class SceneRenderer:
    """Frames of one scene, drawn in chunks: `frames(start, stop)` is an (n, H, W, 3) uint8 array."""

    def __init__(self, scene: Scene):
        self.scene = scene
        config = scene.config
        self.shape = (config.height, config.width, 3)
        self.background = np.array(BACKGROUND, dtype=np.uint8)

    def frames(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape), dtype=np.uint8)
        out[:] = self.background
        for actor in self.scene.actors:  # draw order: appearance order
            first = max(start, actor.appear_frame)
            last = min(stop, actor.vanish_frame if actor.vanish_frame is not None else stop)
            if first >= last:
                continue
            frames = np.arange(first, last)
            xs, ys = actor.positions(frames)
            cx, cy = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
            mask = sprite(actor.shape, actor.radius)
            colour = np.array(COLOURS[actor.colour], dtype=np.uint8)
            r = actor.radius
            changes = np.flatnonzero((np.diff(cx) != 0) | (np.diff(cy) != 0)) + 1
            for run_start, run_stop in zip(np.r_[0, changes], np.r_[changes, len(frames)]):
                x0, y0 = cx[run_start] - r, cy[run_start] - r
                box = out[first - start + run_start: first - start + run_stop, y0: y0 + 2 * r + 1, x0: x0 + 2 * r + 1]
                box[:, mask] = colour
        return out

    def chunks(self, size: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        total = self.scene.config.n_frames
        for start in range(0, total, size):
            yield self.frames(start, min(total, start + size))


def write_video(scene: Scene, path: str | Path) -> Path:
    """Render `scene` to an H.264 MP4 with frame k at exactly k / fps; written to a temporary name
    and renamed, so a file under `path` is always complete."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    config = scene.config
    if config.width % 2 or config.height % 2:
        raise ValueError(f"shapes world: width and height must be even for {PIXEL_FORMAT}, got {config.width}×{config.height}")
    with av.open(str(partial), mode="w", format="mp4", options=MUXER_OPTIONS) as container:
        stream = container.add_stream(CODEC, rate=config.fps, options=ENCODER_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, PIXEL_FORMAT
        stream.codec_context.gop_size = max(1, int(KEYFRAME_EVERY_S * config.fps))
        stream.codec_context.time_base = Fraction(1, config.fps)
        index = 0
        for chunk in SceneRenderer(scene).chunks():
            for image in chunk:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                frame.time_base = stream.codec_context.time_base
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode())
    os.replace(partial, path)
    return path
