"""The frame-embedding cache: keys change with the video's bytes, the model and the fps; entries
round-trip exactly; a damaged entry is detected, deleted and reported."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from nodes.clip.cache import EmbeddingCache, FrameEmbeddings, cache_key, file_digest, model_identity


def entry(n: int = 6, dim: int = 4) -> FrameEmbeddings:
    rng = np.random.default_rng(0)
    return FrameEmbeddings(np.arange(n) * 10, np.arange(n) * 1.0, rng.normal(size=(n, dim)))


def test_file_digest_follows_every_byte_not_the_name(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    a.write_bytes(data)
    b.write_bytes(data)
    assert file_digest(a) == file_digest(b)
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1  # same size, one bit in the middle
    b.write_bytes(bytes(changed))
    assert file_digest(a) != file_digest(b)


def test_keys_differ_by_video_model_and_fps() -> None:
    base = cache_key("v1", "m1", 1.0)
    assert base == cache_key("v1", "m1", 1)
    assert len({base, cache_key("v2", "m1", 1.0), cache_key("v1", "m2", 1.0), cache_key("v1", "m1", 2.0),
                cache_key("v1", "m1", None)}) == 5


def test_model_identity_follows_the_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip_dir, copy)
    first = model_identity(copy)
    assert first == model_identity(copy) and first != model_identity(tiny_clip_dir)  # the directory is part of it
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    assert model_identity(copy) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        model_identity(tmp_path / "empty")


def test_entries_round_trip_and_are_written_whole(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "cache")
    frames = entry()
    assert cache.load("k") is None
    path = cache.save("k", frames, video="clip.mp4", fps=1.0)
    again = cache.load("k")
    assert again is not None
    np.testing.assert_array_equal(again.frame_indices, frames.frame_indices)
    np.testing.assert_array_equal(again.times_s, frames.times_s)
    np.testing.assert_array_equal(again.embeddings, frames.embeddings)
    assert again.embeddings.dtype == np.float32 and again.frame_indices.dtype == np.int64
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_key"])
def test_a_damaged_entry_is_deleted_and_reported(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = EmbeddingCache(tmp_path)
    path = cache.save("k", entry())
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        start = data.find(b"embeddings.npy")
        data[start + 200] ^= 0xFF  # inside the embeddings' bytes
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"not a cache entry")
    else:
        shutil.copy(path, cache.path("other"))
        path = cache.path("other")
    with caplog.at_level(logging.WARNING, logger="groundloop.clip.cache"):
        assert cache.load(path.stem) is None
    assert not path.exists() and "damaged" in caplog.text


def test_inconsistent_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        FrameEmbeddings(np.arange(3), np.arange(2) * 1.0, np.zeros((3, 4)))
