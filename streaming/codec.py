"""Wire format: one compact msgpack header frame, then one raw frame per inline array.

A message on the wire is a list of frames (ZeroMQ multipart):

    frame 0   MAGIC (4 bytes) | VERSION (u16 little-endian) | msgpack header
    frame 1.. the raw bytes of each inline array, in header order

The header is ``{"t": type name, "f": plain fields, "a": [[name, dtype, shape, location], ...]}``.
``location`` is ``None`` for an inline array (its bytes are the next frame) or a shared-memory
descriptor (a list the shared-memory layer understands) for an array placed in a segment on this host.

Arrays are sent without a copy when they are C-contiguous (a non-contiguous array costs one copy to
make it so) and decoded as read-only numpy views of the received buffers. Anything malformed raises
`CodecError` with the reason; callers count it and go on.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from numpy.lib import format as npy_format

MAGIC = b"GLMS"
VERSION = 1
_PREFIX = struct.Struct("<4sH")

#: decodes a shared-memory descriptor into an array view
ShmResolver = Callable[[list, np.dtype, tuple[int, ...]], np.ndarray]
#: places an array in shared memory and returns its descriptor, or None to send it inline
ShmPlacer = Callable[[np.ndarray], "list | None"]


class CodecError(ValueError):
    """A frame that cannot be decoded: malformed, truncated, or of another version."""


@dataclass
class Payload:
    """A message in wire-neutral form: its type name, plain fields and named arrays."""

    type_name: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def dtype_to_wire(dtype: np.dtype) -> str | list:
    """A msgpack-able description of any non-object numpy dtype (the .npy format's descr)."""
    if dtype.hasobject:
        raise CodecError(f"dtype {dtype} holds Python objects and cannot travel as raw bytes")
    return npy_format.dtype_to_descr(dtype)


def _tuples(descr: Any) -> Any:
    """msgpack turns the descr's tuples into lists; numpy wants (name | (title, name), format[, shape])."""
    if not isinstance(descr, list):
        return descr
    entries = []
    for name, fmt, *shape in descr:
        entry = (tuple(name) if isinstance(name, list) else name, _tuples(fmt))
        entries.append(entry + (tuple(shape[0]),) if shape else entry)
    return entries


def dtype_from_wire(descr: str | list) -> np.dtype:
    return npy_format.descr_to_dtype(_tuples(descr))


def _as_bytes_view(array: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous copy-free array (copies only if not contiguous)."""
    contiguous = np.ascontiguousarray(array)
    return contiguous.reshape(-1).view(np.uint8) if contiguous.size else np.empty(0, np.uint8)


def encode(payload: Payload, place_in_shm: ShmPlacer | None = None) -> list:
    """Frames for `payload`: the header, then the buffers of inline arrays (no copies)."""
    specs: list[list] = []
    buffers: list = []
    for name, array in payload.arrays.items():
        if not isinstance(array, np.ndarray):
            raise CodecError(f"field {name!r} of {payload.type_name}: expected a numpy array, got {type(array).__name__}")
        wire_dtype = dtype_to_wire(array.dtype)
        location = place_in_shm(array) if place_in_shm is not None else None
        specs.append([name, wire_dtype, list(array.shape), location])
        if location is None:
            buffers.append(_as_bytes_view(array))
    try:
        header = msgpack.packb({"t": payload.type_name, "f": payload.fields, "a": specs}, use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{payload.type_name}: a field cannot be encoded ({exc})") from exc
    return [_PREFIX.pack(MAGIC, VERSION) + header, *buffers]


def _buffer(frame: Any) -> memoryview:
    """The bytes of a received frame: zmq.Frame, bytes or any buffer."""
    buffer = getattr(frame, "buffer", frame)
    return memoryview(buffer).cast("B")


def decode(frames: Sequence[Any], resolve_shm: ShmResolver | None = None) -> Payload:
    """Payload of `frames`; arrays are read-only views of the frames' buffers."""
    if not frames:
        raise CodecError("empty message: no header frame")
    head = _buffer(frames[0])
    if len(head) < _PREFIX.size:
        raise CodecError(f"header frame truncated: {len(head)} bytes, need at least {_PREFIX.size}")
    magic, version = _PREFIX.unpack_from(head)
    if magic != MAGIC:
        raise CodecError(f"not a groundloop message: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CodecError(f"unsupported wire version {version}; this build speaks version {VERSION}")
    try:
        header = msgpack.unpackb(head[_PREFIX.size:], raw=False, strict_map_key=False)
        type_name, fields, specs = header["t"], header["f"], header["a"]
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise CodecError(f"malformed header: {exc}") from exc
    if not isinstance(type_name, str) or not isinstance(fields, dict) or not isinstance(specs, list):
        raise CodecError("malformed header: wrong field types")
    n_inline = sum(1 for spec in specs if spec[3] is None)
    if len(frames) - 1 != n_inline:
        raise CodecError(f"{type_name}: header names {n_inline} inline arrays but {len(frames) - 1} frames followed")
    arrays: dict[str, np.ndarray] = {}
    next_frame = 1
    for spec in specs:
        try:
            name, wire_dtype, shape, location = spec
            dtype, shape = dtype_from_wire(wire_dtype), tuple(int(s) for s in shape)
        except Exception as exc:
            raise CodecError(f"{type_name}: malformed array spec {spec!r}: {exc}") from exc
        if location is None:
            arrays[name] = _view(type_name, name, _buffer(frames[next_frame]), dtype, shape)
            next_frame += 1
        elif resolve_shm is None:
            raise CodecError(f"{type_name}.{name}: array is in shared memory but this receiver cannot map it")
        else:
            arrays[name] = resolve_shm(location, dtype, shape)
    return Payload(type_name, fields, arrays)


def _view(type_name: str, name: str, buffer: memoryview, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise CodecError(f"{type_name}.{name}: buffer has {len(buffer)} bytes, shape {shape} of {dtype} needs {expected}")
    if count == 0:
        return np.empty(shape, dtype)
    array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
    array.flags.writeable = False
    return array
