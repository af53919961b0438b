"""Recording files: groundloop messages in MCAP, readable by Foxglove, Rerun and the `mcap` tools.

Each stream ("env/frame") is an MCAP channel. A message's data is its codec frames, packed as

    u32 n | n × u64 frame length | frame 0 (the codec header) | frame 1 .. n-1 (raw array buffers)

(all little-endian), under message encoding ``groundloop-glms``; each message type has a JSON Schema
(schema encoding ``jsonschema``) that names its fields, so another tool can see what is inside.
log_time is the message's capture stamp, publish_time the time it was recorded.

Crash safety: chunks are closed (compressed, written and flushed to the OS) once they hold
`chunk_bytes` or are `chunk_age_s` old, so a recorder killed with SIGKILL loses at most its open
chunk. Such a file has no summary; `read_messages` reads it up to its last intact chunk and `repair`
rewrites it into a complete file.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Footer, Message, Metadata, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import MCAP0_MAGIC, CompressionType, Writer

from streaming.codec import Payload, decode, dtype_to_wire, encode

log = logging.getLogger("groundloop.recording")

MESSAGE_ENCODING = "groundloop-glms"
SCHEMA_ENCODING = "jsonschema"
PROFILE = "groundloop"
LIBRARY = "groundloop-recording/1"
TYPE_KEY = "type"  # channel metadata: the message type a channel carries
COMPRESSIONS = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
DEFAULT_COMPRESSION = "zstd"
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
DEFAULT_CHUNK_AGE_S = 1.0
_NEVER_BY_SIZE = 1 << 62  # mcap's own size trigger is off: this module decides when a chunk closes
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_SEQUENCE_MODULO = 1 << 32  # MCAP's sequence field is u32; the full seq is in the codec header
#: what a damaged file raises while it is read: truncated records, bad CRCs, broken compression
_DAMAGE = (McapError, struct.error, ValueError, EOFError, RuntimeError, zstandard.ZstdError)
_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (list, "array"), (dict, "object"), (type(None), "null"))
WIRE_LAYOUT = ("u32 n, n x u64 frame lengths, then the frames: a GLMS codec header (magic, u16 version, "
               "msgpack {t: type, f: fields, a: [[name, dtype descr, shape, null]]}) and one raw buffer per array")


class RecordingError(ValueError):
    """A recording that cannot be opened or written."""


def pack_frames(frames: Sequence[Any]) -> bytes:
    """One MCAP message body from codec frames (see the module docstring)."""
    views = [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]
    table = _COUNT.pack(len(views)) + b"".join(_LENGTH.pack(len(v)) for v in views)
    return b"".join([table, *views])


def unpack_frames(data: bytes | memoryview) -> list[memoryview]:
    """The codec frames of an MCAP message body, as views of it (no copies)."""
    view = memoryview(data).cast("B")
    try:
        (count,) = _COUNT.unpack_from(view)
        lengths = [_LENGTH.unpack_from(view, _COUNT.size + i * _LENGTH.size)[0] for i in range(count)]
    except struct.error as exc:
        raise RecordingError(f"message body truncated: {exc}") from None
    offset = _COUNT.size + count * _LENGTH.size
    if offset + sum(lengths) != len(view):
        raise RecordingError(f"message body has {len(view)} bytes, its frame table says {offset + sum(lengths)}")
    frames = []
    for length in lengths:
        frames.append(view[offset:offset + length])
        offset += length
    return frames


def describe_payload(payload: Payload) -> dict[str, Any]:
    """A JSON Schema read off one payload, for writers that know no richer description of the type."""
    properties: dict[str, Any] = {}
    for name, value in payload.fields.items():
        json_type = next((t for py, t in _JSON_TYPES if isinstance(value, py)), None)
        properties[name] = {"type": json_type} if json_type else {}
    for name, array in payload.arrays.items():
        properties[name] = {"type": "array", "x-ndarray": {"dtype": dtype_to_wire(array.dtype), "ndim": array.ndim}}
    return {"title": payload.type_name, "type": "object", "properties": properties, "x-wire-layout": WIRE_LAYOUT}


@dataclass(frozen=True)
class RecordedMessage:
    stream: str
    type_name: str
    log_time_ns: int
    publish_time_ns: int
    data: bytes

    def payload(self) -> Payload:
        """The message, decoded: its arrays are read-only views of `data`."""
        return decode(unpack_frames(self.data))


class RecordingWriter:
    """Writes one recording; close it (or use it as a context manager) to write the summary."""

    def __init__(self, path: str | Path, *, compression: str = DEFAULT_COMPRESSION,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, chunk_age_s: float = DEFAULT_CHUNK_AGE_S):
        if compression not in COMPRESSIONS:
            raise RecordingError(f"unknown compression {compression!r} (one of: {', '.join(COMPRESSIONS)})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._mcap = Writer(self._file, chunk_size=_NEVER_BY_SIZE, compression=COMPRESSIONS[compression])
        self._mcap.start(profile=PROFILE, library=LIBRARY)
        self._chunk_bytes, self._chunk_age_s = chunk_bytes, chunk_age_s
        self._schemas: dict[str, int] = {}
        self._channels: dict[tuple[str, str], int] = {}
        self._open_bytes = 0
        self._opened_at: float | None = None
        self.closed = False

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add_metadata(self, name: str, values: dict[str, str]) -> None:
        self._mcap.add_metadata(name, values)

    def write(self, payload: Payload, stream: str, log_time_ns: int, publish_time_ns: int | None = None,
              sequence: int = 0, schema: dict[str, Any] | None = None) -> None:
        """Record `payload` on `stream`; `schema` describes its type (read off the payload if None)."""
        if schema is None and payload.type_name not in self._schemas:
            schema = describe_payload(payload)
        self.write_frames(encode(payload), stream, payload.type_name, log_time_ns, publish_time_ns, sequence, schema)

    def write_frames(self, frames: Sequence[Any], stream: str, type_name: str, log_time_ns: int,
                     publish_time_ns: int | None = None, sequence: int = 0, schema: dict[str, Any] | None = None) -> None:
        """Record already encoded codec frames (inline arrays only)."""
        self.write_packed(pack_frames(frames), stream, type_name, log_time_ns, publish_time_ns, sequence, schema)

    def write_packed(self, data: bytes, stream: str, type_name: str, log_time_ns: int,
                     publish_time_ns: int | None = None, sequence: int = 0, schema: dict[str, Any] | None = None) -> None:
        if self.closed:
            raise RecordingError(f"{self.path}: written after close()")
        channel = self.channel(stream, type_name, schema)
        publish = time.monotonic_ns() if publish_time_ns is None else publish_time_ns
        self._mcap.add_message(channel, log_time_ns, data, publish, sequence % _SEQUENCE_MODULO)
        self._open_bytes += len(data)
        if self._opened_at is None:
            self._opened_at = time.monotonic()
        self.flush_if_due()

    def flush_if_due(self) -> None:
        """Close the open chunk if it is full or old enough (callers with an idle loop call this too)."""
        if self._opened_at is not None and (self._open_bytes >= self._chunk_bytes
                                            or time.monotonic() - self._opened_at >= self._chunk_age_s):
            self.flush()

    def flush(self) -> None:
        """Close the open chunk and hand it to the OS: from now on it survives a crash."""
        self._mcap.flush()
        self._open_bytes, self._opened_at = 0, None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._mcap.finish()
        finally:
            self._file.close()

    def channel(self, stream: str, type_name: str, schema: dict[str, Any] | None = None) -> int:
        """The id of `stream`'s channel for `type_name`, registered on first use (declaring a stream up
        front tells readers it was recorded, even if no message came)."""
        key = (stream, type_name)
        if key not in self._channels:
            if type_name not in self._schemas:
                body = json.dumps(schema or {"title": type_name}, sort_keys=True).encode()
                self._schemas[type_name] = self._mcap.register_schema(type_name, SCHEMA_ENCODING, body)
            self._channels[key] = self._mcap.register_channel(stream, MESSAGE_ENCODING, self._schemas[type_name],
                                                              {TYPE_KEY: type_name})
        return self._channels[key]


@dataclass
class _Scan:
    """What a sequential read found: every intact record, and where and why it stopped."""

    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    intact_bytes: int = 0
    complete: bool = False  # read to the footer
    damage: str | None = None

    def records(self, path: Path) -> Iterator[Message]:
        """Messages in file order; schema, channel and metadata records are kept on the way."""
        with open(path, "rb") as f:
            records = StreamReader(f, emit_chunks=True).records
            while True:
                try:
                    record = next(records)
                    inner = breakup_chunk(record, validate_crc=True) if isinstance(record, Chunk) else [record]
                except StopIteration:
                    return
                except _DAMAGE as exc:
                    self.damage = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    return
                for item in inner:
                    if isinstance(item, Schema):
                        self.schemas.setdefault(item.id, item)
                    elif isinstance(item, Channel):
                        self.channels.setdefault(item.id, item)
                    elif isinstance(item, Metadata):
                        self.metadata[item.name] = dict(item.metadata)
                    elif isinstance(item, Message):
                        yield item
                self.intact_bytes = f.tell()
                self.complete = self.complete or isinstance(record, Footer)

    def schema_of(self, channel_id: int) -> dict[str, Any] | None:
        """The JSON Schema of a channel's message type, if it has one."""
        schema = self.schemas.get(self.channels[channel_id].schema_id)
        return _schema_body(schema) if schema is not None else None

    def recorded(self, message: Message) -> RecordedMessage:
        channel = self.channels.get(message.channel_id)
        if channel is None:
            raise RecordingError(f"message on unknown channel {message.channel_id}")
        return RecordedMessage(channel.topic, channel.metadata.get(TYPE_KEY, ""), message.log_time,
                               message.publish_time, message.data)


def read_messages(path: str | Path, streams: Collection[str] | None = None) -> Iterator[RecordedMessage]:
    """The recorded messages of `streams` (all if None), in the order they were written.

    A file whose writer was killed is read up to its last intact chunk (with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording")
    scan = _Scan()
    for message in scan.records(path):
        recorded = scan.recorded(message)
        if streams is None or recorded.stream in streams:
            yield recorded
    if scan.damage is not None:
        log.warning("%s: damaged after %d bytes (%s); read what came before. `groundloop record --repair %s` "
                    "rewrites it", path, scan.intact_bytes, scan.damage, path)


@dataclass
class RecordingInfo:
    path: Path
    streams: dict[str, str]  # stream -> message type
    counts: dict[str, int]  # stream -> messages
    schemas: dict[str, dict[str, Any]]  # message type -> JSON Schema
    complete: bool


def read_info(path: str | Path) -> RecordingInfo:
    """Streams, counts and schemas: from the summary of a complete file, else by reading it through."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording")
    summary = None
    with open(path, "rb") as f:
        f.seek(max(path.stat().st_size - len(MCAP0_MAGIC), 0))
        if f.read() == MCAP0_MAGIC:  # ends like a complete file: trust its summary
            f.seek(0)
            try:
                summary = make_reader(f).get_summary()
            except (*_DAMAGE, OSError):
                summary = None
    if summary is not None and summary.statistics is not None:
        channels, schemas, complete = summary.channels, summary.schemas, True
        counts_by_id = dict(summary.statistics.channel_message_counts)
    else:
        scan = _Scan()
        counts_by_id = {}
        for message in scan.records(path):
            counts_by_id[message.channel_id] = counts_by_id.get(message.channel_id, 0) + 1
        channels, schemas, complete = scan.channels, scan.schemas, scan.complete
    info = RecordingInfo(path, {}, {}, {}, complete)
    for channel_id, channel in channels.items():
        info.streams[channel.topic] = channel.metadata.get(TYPE_KEY, "")
        info.counts[channel.topic] = info.counts.get(channel.topic, 0) + counts_by_id.get(channel_id, 0)
    for schema in schemas.values():
        info.schemas[schema.name] = _schema_body(schema)
    return info


def _schema_body(schema: Schema) -> dict[str, Any]:
    return json.loads(schema.data) if schema.encoding == SCHEMA_ENCODING else {}


@dataclass
class RepairReport:
    path: Path
    messages: int
    dropped_bytes: int  # the damaged tail that could not be read
    was_complete: bool


def repair(path: str | Path, out: str | Path | None = None) -> RepairReport:
    """Rewrite a recording, e.g. one whose writer was killed, into a complete file (summary, footer)
    holding every message of its intact chunks; in place unless `out` is given."""
    path = Path(path)
    target = Path(out) if out is not None else path
    temporary = target.with_name(target.name + ".repairing")
    scan = _Scan()
    messages = 0
    known_types: set[str] = set()
    with RecordingWriter(temporary) as writer:
        for message in scan.records(path):
            recorded = scan.recorded(message)
            schema = scan.schema_of(message.channel_id) if recorded.type_name not in known_types else None
            known_types.add(recorded.type_name)
            writer.write_packed(recorded.data, recorded.stream, recorded.type_name, message.log_time,
                                message.publish_time, message.sequence, schema)
            messages += 1
        for channel_id, channel in scan.channels.items():  # declared streams that got no message, too
            writer.channel(channel.topic, channel.metadata.get(TYPE_KEY, ""), scan.schema_of(channel_id))
        for name, values in scan.metadata.items():
            writer.add_metadata(name, values)
    dropped = path.stat().st_size - scan.intact_bytes if not scan.complete else 0
    os.replace(temporary, target)
    return RepairReport(target, messages, dropped, scan.complete)
