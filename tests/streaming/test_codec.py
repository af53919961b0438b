import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streaming.codec import MAGIC, VERSION, CodecError, Payload, decode, encode

SCALAR_DTYPES = st.one_of(
    hnp.boolean_dtypes(), hnp.integer_dtypes(endianness="="), hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"), hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"), hnp.timedelta64_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
)
DTYPES = st.one_of(SCALAR_DTYPES, hnp.array_dtypes(SCALAR_DTYPES, min_size=1, max_size=3))


def _roundtrip(arrays: dict[str, np.ndarray], fields: dict | None = None) -> Payload:
    frames = encode(Payload("T", fields or {}, arrays))
    wire = [bytes(memoryview(f).cast("B")) for f in frames]  # what a socket delivers
    return decode(wire)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_any_dtype_and_shape_round_trips(array):
    out = _roundtrip({"a": array}).arrays["a"]
    assert out.dtype == array.dtype and out.shape == array.shape
    assert out.tobytes() == array.tobytes()  # exact, NaNs and padding included


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, (6, 8)), st.integers(1, 3), st.integers(1, 3))
def test_non_contiguous_views_round_trip(array, step0, step1):
    view = array[::step0, ::-step1].T
    assert not view.flags.c_contiguous or view.size <= 1
    np.testing.assert_array_equal(_roundtrip({"v": view}).arrays["v"], view)


def test_empty_zero_d_and_plain_fields():
    arrays = {"empty": np.zeros((0, 3), np.float64), "scalar": np.array(7, np.int16)}
    out = _roundtrip(arrays, {"name": "x", "n": 3, "nested": {"a": [1, 2.5, None]}})
    assert out.arrays["empty"].shape == (0, 3) and out.arrays["scalar"].shape == () and out.arrays["scalar"] == 7
    assert out.fields == {"name": "x", "n": 3, "nested": {"a": [1, 2.5, None]}}


def test_large_array_is_sent_and_received_without_copies():
    big = np.random.default_rng(0).integers(0, 255, 40 * 1024 * 1024, dtype=np.uint8)
    frames = encode(Payload("T", {}, {"big": big}))
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), big)  # the frame is the array's memory
    received = bytearray(memoryview(frames[1]))
    out = decode([frames[0], received]).arrays["big"]
    assert np.shares_memory(out, np.frombuffer(received, np.uint8))  # a view of the received buffer
    assert not out.flags.writeable
    np.testing.assert_array_equal(out, big)


def test_object_arrays_are_refused():
    with pytest.raises(CodecError, match="Python objects"):
        encode(Payload("T", {}, {"o": np.array([object()])}))


@pytest.mark.parametrize("frames, reason", [
    ([], "empty message"),
    ([b"GL"], "truncated"),
    ([b"XXXX\x01\x00" + msgpack.packb({"t": "T", "f": {}, "a": []})], "magic"),
    ([MAGIC + (VERSION + 1).to_bytes(2, "little") + msgpack.packb({"t": "T", "f": {}, "a": []})], "unsupported wire version"),
    ([MAGIC + VERSION.to_bytes(2, "little") + b"\xc1garbage"], "malformed header"),
    ([MAGIC + VERSION.to_bytes(2, "little") + msgpack.packb({"t": "T", "f": {}, "a": [["x", "<f4", [4], None]]})], "1 inline arrays but 0 frames"),
    ([MAGIC + VERSION.to_bytes(2, "little") + msgpack.packb({"t": "T", "f": {}, "a": [["x", "<f4", [4], None]]}), b"abc"], "needs 16"),
    ([MAGIC + VERSION.to_bytes(2, "little") + msgpack.packb({"t": "T", "f": {}, "a": [["x", "not-a-dtype", [4], None]]}), b"abc"], "malformed array spec"),
])
def test_malformed_frames_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(CodecError, match=reason):
        decode(frames)
