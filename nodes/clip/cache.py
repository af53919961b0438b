"""Per-frame CLIP embeddings of a whole video, cached on disk: a second question about the same
video costs no CLIP pass (A.I.R. caches its 1 fps CLIP scores the same way; they are its most
expensive stage, 47 s per Video-MME video).

The key is (video content, model identity, fps):
- video content: BLAKE2b of every byte of the file, read in 1 MiB chunks. Exact — an edit anywhere,
  even one that keeps the size, changes the key — at about 1 s per GB on these machines, far below a
  CLIP pass over the same video. Renaming or copying the video keeps its cache.
- model identity: the model directory's resolved path plus the hash of the files that decide an
  image embedding (weights: *.safetensors, *.bin, *.onnx; and preprocessor_config.json). Retraining
  into the same directory therefore misses the old entries.
- fps: the sampling rate the frames were drawn at (None: every frame).

An entry is one `.npz` (frame indices, times, embeddings, and a JSON record with a digest of the
arrays), written to a temporary name and renamed into place. An entry that does not load, or whose
arrays do not match its digest, is reported, deleted and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_FORMAT = "groundloop.clip_cache/1"
CHUNK_BYTES = 1 << 20
DIGEST_BYTES = 16
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")
IDENTITY_FILES = ("preprocessor_config.json",)
ENTRY_SUFFIX = ".npz"
ALL_FRAMES = "all"  # the fps part of a key when every frame is kept
RECORD_KEY = "record"

log = logging.getLogger("groundloop.clip.cache")


def file_digest(path: str | Path) -> str:
    """BLAKE2b-128 of the whole file, read in chunks (memory stays at one chunk)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def model_identity(directory: str | Path) -> str:
    """Resolved directory + the hashes of its weight and preprocessing files."""
    directory = Path(directory).resolve()
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in IDENTITY_FILES))
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise FileNotFoundError(f"{directory}: no weight files ({', '.join(WEIGHT_SUFFIXES)}) to identify the model by")
    h = hashlib.blake2b(str(directory).encode(), digest_size=DIGEST_BYTES)
    for path in files:
        h.update(f"{path.name}:{file_digest(path)}".encode())
    return f"{directory}@{h.hexdigest()}"


@dataclass
class FrameEmbeddings:
    """One video's sampled frames and their L2-normalised image embeddings."""

    frame_indices: np.ndarray  # (N,) int64
    times_s: np.ndarray  # (N,) float64
    embeddings: np.ndarray  # (N, D) float32

    def __post_init__(self) -> None:
        self.frame_indices = np.asarray(self.frame_indices, dtype=np.int64)
        self.times_s = np.asarray(self.times_s, dtype=np.float64)
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        n = len(self.frame_indices)
        if len(self.times_s) != n or self.embeddings.ndim != 2 or len(self.embeddings) != n:
            raise ValueError(f"inconsistent frame embeddings: {n} indices, {len(self.times_s)} times, "
                             f"embeddings {self.embeddings.shape}")

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for array in (self.frame_indices, self.times_s, self.embeddings):
            h.update(str((array.dtype.str, array.shape)).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def cache_key(video_digest: str, identity: str, fps: float | None) -> str:
    """The file name stem of an entry: a hash of the three parts (the record keeps them readable)."""
    parts = {"format": CACHE_FORMAT, "video": video_digest, "model": identity,
             "fps": ALL_FRAMES if fps is None else repr(float(fps))}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=DIGEST_BYTES).hexdigest()


class EmbeddingCache:
    """Entries in one directory, one file per key."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / (key + ENTRY_SUFFIX)

    def load(self, key: str) -> FrameEmbeddings | None:
        """The entry, or None when there is none or it is damaged (then it is deleted)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # our handle: closed on errors too
                record = json.loads(bytes(data[RECORD_KEY]).decode())
                frames = FrameEmbeddings(data["frame_indices"], data["times_s"], data["embeddings"])
            if record.get("format") != CACHE_FORMAT or record.get("key") != key or record.get("digest") != frames.digest():
                raise ValueError("its arrays do not match the digest recorded with them")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            log.warning("CLIP cache entry %s is damaged (%s): deleting it, the embeddings are recomputed", path, exc)
            path.unlink(missing_ok=True)
            return None
        return frames

    def save(self, key: str, frames: FrameEmbeddings, **about: str | float | None) -> Path:
        """Write atomically: a temporary file in the same directory, renamed over the entry."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {"format": CACHE_FORMAT, "key": key, "digest": frames.digest(), **about}
        path = self.path(key)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.savez(f, frame_indices=frames.frame_indices, times_s=frames.times_s, embeddings=frames.embeddings,
                     **{RECORD_KEY: np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        return path
