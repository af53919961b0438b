import gc
import uuid

import numpy as np
import pytest

from streaming.codec import Payload, decode, encode
from streaming.shm import ShmReader, ShmWriter, segments_with_prefix, unlink_prefix


@pytest.fixture
def prefix():
    name = f"gl-test-{uuid.uuid4().hex[:8]}"
    yield name
    unlink_prefix(name)


def _send(writer: ShmWriter, reader: ShmReader, array: np.ndarray, used: list | None = None) -> np.ndarray:
    frames = encode(Payload("T", {}, {"a": array}), lambda a: writer.place(a, [0], used))
    return decode(frames, lambda loc, dtype, shape: reader.view(loc, dtype, shape, 0)).arrays["a"]


def test_large_array_crosses_as_descriptor_and_arrives_as_view(prefix):
    writer, reader = ShmWriter(prefix), ShmReader()
    array = np.arange(300_000, dtype=np.float32).reshape(600, 500)
    frames = encode(Payload("T", {}, {"a": array}), lambda a: writer.place(a, [0]))
    assert len(frames) == 1 and len(frames[0]) < 200  # only the header with the descriptor travels
    out = decode(frames, lambda loc, dtype, shape: reader.view(loc, dtype, shape, 0)).arrays["a"]
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable
    writer.close()


def test_segment_is_reused_once_every_view_is_gone(prefix):
    writer, reader = ShmWriter(prefix, max_segments=1), ShmReader()
    first = _send(writer, reader, np.full(100_000, 1, np.uint8))
    kept = first[10:20]  # a derived view still holds the segment
    del first
    gc.collect()
    assert writer.place(np.zeros(100_000, np.uint8), [0]) is None  # busy: caller sends inline
    assert writer.fallbacks == 1
    del kept
    gc.collect()
    second = _send(writer, reader, np.full(100_000, 2, np.uint8))
    assert second[0] == 2 and len(segments_with_prefix(prefix)) == 1
    writer.close()


def test_a_late_release_of_an_older_message_does_not_free_a_newer_one(prefix):
    writer, reader = ShmWriter(prefix, max_segments=1), ShmReader()
    used: list = []
    old = _send(writer, reader, np.full(100_000, 1, np.uint8), used)
    del old
    gc.collect()
    new = _send(writer, reader, np.full(100_000, 2, np.uint8))
    segment, index, generation = used[0]
    writer.release(segment, index, generation)  # e.g. a producer forgetting the old message late
    assert writer.place(np.zeros(100_000, np.uint8), [0]) is None  # the new message still holds it
    assert new[0] == 2
    writer.close()


def test_small_arrays_stay_inline_and_close_unlinks_everything(prefix):
    writer = ShmWriter(prefix)
    assert writer.place(np.zeros(16, np.uint8), [0]) is None
    assert writer.place(np.zeros(1 << 20, np.uint8), [0]) is not None
    assert segments_with_prefix(prefix)
    writer.close()
    assert segments_with_prefix(prefix) == []


def test_a_loan_is_filled_in_place_and_sent_without_a_copy(prefix):
    writer, reader = ShmWriter(prefix, max_segments=2), ShmReader()
    loan = writer.loan((500, 400), np.float32)
    loan[:] = 3.0
    frames = encode(Payload("T", {}, {"a": loan}), lambda a: writer.place(a, [0]))
    out = decode(frames, lambda loc, dtype, shape: reader.view(loc, dtype, shape, 0)).arrays["a"]
    assert out.shape == (500, 400) and float(out[0, 0]) == 3.0 and float(out[-1, -1]) == 3.0
    assert not loan.flags.writeable  # sent: it belongs to the readers now
    assert writer.placed == 1 and len(segments_with_prefix(prefix)) == 1  # no second segment: no copy


def test_an_unsent_loan_returns_to_the_pool(prefix):
    writer = ShmWriter(prefix, max_segments=1)
    loan = writer.loan((1 << 20,), np.uint8)
    assert writer.loan((1 << 20,), np.uint8) is None  # the only segment is out on loan
    del loan
    gc.collect()
    assert writer.loan((1 << 20,), np.uint8) is not None
    writer.close()
