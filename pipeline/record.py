"""Recording a run: the tap every executor calls for each emitted message on a recorded stream.

inproc: `Recorder` is called in the runner's emit path and writes the message to the MCAP file
(streaming.recording) before any consumer sees it, so the file holds exactly what was emitted, in
emission order.

zmq: the supervisor runs a `RecordSink` thread that binds one PULL socket (ipc, in the run's
directory) and is the only writer of the file; each worker whose node has a recorded output
connects a `RecordForwarder` (PUSH) and, in its send path, forwards every message on a recorded
stream: a small envelope (stream, type, stamps, seq) plus the codec frames with arrays inline
(copied out of shared memory, so segments are released as usual). This keeps the graph untouched
(no recorder node, no extra edges or flow-control peers), and a slow disk slows only the nodes
whose outputs are recorded (the forwarder waits, staying visibly alive and stoppable, like a full
lossless edge). A restarted node re-emits messages under the seqs it had used; the sink keeps the
first copy of each (stream, seq). What a node had queued for the sink when it crashed is lost (a
hard crash only: a stopping node lingers until its queue is delivered). With `--machine`, each
machine's supervisor records the streams of its own nodes.

The schedule (inproc only): a replay reproduces a run only if every node meets its inputs in the
same order as live, and two things decided that order which the messages alone do not show: when a
node emitted (a robot emits step t + 1 while handling the command for step t, in the middle of the
graph's work, not at a quiet moment) and when an input timeout fired (by the wall clock). So the
inproc recorder also writes, as MCAP metadata records `groundloop.schedule.NNNNNN` (JSON; metadata,
so stream listings and readers of the messages are unaffected), one entry per `Dispatch` that
emitted on a recorded stream — which node handled which input (port, seq), ticked or timed out, and
what it emitted — and one per timeout, with the last input or tick dispatched before it fired.
`pipeline.replay` gates a replayed node's emissions on the inputs that caused them and fires the
recorded timeouts where they fired. A zmq recording has no schedule (its order is not reproducible).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import struct
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import yaml
import zmq
from mcap.exceptions import McapError
from mcap.reader import make_reader

from pipeline.graph import Graph, RecordSpec
from pipeline.messages import Message
from streaming.codec import encode
from streaming.recording import WIRE_LAYOUT, RecordedMessage, RecordingWriter, read_messages

log = logging.getLogger("groundloop.record")

METADATA_NAME = "groundloop.graph"
RECORD_HWM = 1000  # messages a worker may have queued for the recorder before it waits
RECORD_LINGER_MS = 10_000  # a finishing worker's last messages reach the recorder within this
POLL_MS = 100
SCHEDULE_METADATA = "groundloop.schedule"  # pieces are named groundloop.schedule.000000, .000001, ...
SCHEDULE_ENTRIES_KEY = "entries"
SCHEDULE_PIECE_ENTRIES = 512  # entries per metadata record: a killed recorder loses at most this many
ON_INPUT, ON_TICK, ON_TIMEOUT = "input", "tick", "timeout"
#: what a damaged recording raises while its metadata is read (a recorder killed mid-write)
_DAMAGE = (McapError, struct.error, ValueError, EOFError, RuntimeError)
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def message_schema(cls: type[Message]) -> dict[str, Any]:
    """The JSON Schema of a message type, from its dataclass fields (arrays are `x-ndarray`)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return {"title": cls.__name__, "description": (cls.__doc__ or "").strip(), "type": "object",
            "properties": {f.name: _json_type(hints[f.name]) for f in fields}, "required": required,
            "x-wire-layout": WIRE_LAYOUT}


def _json_type(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is np.ndarray:
        return {"type": "array", "x-ndarray": {}}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_json_type(arg) for arg in args]}
    if origin is list or annotation is list:
        return {"type": "array", **({"items": _json_type(args[0])} if args else {})}
    if origin is dict or annotation is dict:
        return {"type": "object", **({"additionalProperties": _json_type(args[1])} if args else {})}
    return {"type": _SCALARS[annotation]} if annotation in _SCALARS else {}


def open_recording(spec: RecordSpec, graph: Graph) -> RecordingWriter:
    """A recording of `graph`'s run with every recorded stream declared, so an empty one shows as recorded."""
    writer = RecordingWriter(spec.out)
    writer.add_metadata(METADATA_NAME, graph_metadata(graph))
    for stream in spec.streams:
        node, _, port = stream.partition("/")
        cls = graph.nodes[node].cls.outputs[port]
        writer.channel(stream, cls.__name__, message_schema(cls))
    return writer


def graph_metadata(graph: Graph) -> dict[str, str]:
    """What a recording says about the run it came from: the graph as it was run."""
    return {"name": graph.name, "file": graph.file, "yaml": yaml.safe_dump(graph.raw, sort_keys=False)}


def recorded_messages(path: str | Path, streams: set[str] | None = None) -> Iterator[tuple[RecordedMessage, Message]]:
    """The messages of a recording as typed messages, in the order they were recorded."""
    for recorded in read_messages(path, streams):
        yield recorded, Message.from_payload(recorded.payload())


@dataclasses.dataclass(frozen=True)
class Dispatch:
    """One thing an executor had a node do: handle an input message, tick, or time out on an input.
    `seq`: the handled message's seq (input); producing ticks before this one (tick); timeouts on
    `port` before this one (timeout). Within one run each dispatch is unique."""

    node: str
    on: str  # ON_INPUT, ON_TICK or ON_TIMEOUT
    port: str = ""
    seq: int = 0


@dataclasses.dataclass(frozen=True)
class ScheduleEntry:
    """A dispatch of the recorded run, what it emitted on recorded streams and, for a timeout, the
    input or tick dispatched last before it fired (None: before any)."""

    dispatch: Dispatch
    emitted: tuple[tuple[str, int], ...] = ()  # (stream, seq)
    after: Dispatch | None = None


def _dispatch_row(dispatch: Dispatch | None) -> list | None:
    return None if dispatch is None else [dispatch.node, dispatch.on, dispatch.port, dispatch.seq]


def _dispatch(row: Sequence | None) -> Dispatch | None:
    return None if row is None else Dispatch(*row)


def read_schedule(path: str | Path) -> list[ScheduleEntry] | None:
    """The schedule of a recorded inproc run, in dispatch order; None if the recording has none."""
    pieces: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            for record in make_reader(f).iter_metadata():
                if record.name.startswith(SCHEDULE_METADATA + "."):
                    pieces[record.name] = record.metadata[SCHEDULE_ENTRIES_KEY]
    except _DAMAGE as exc:
        log.warning("%s: schedule read up to damage (%s)", path, exc)
    if not pieces:
        return None
    return [ScheduleEntry(_dispatch(node), tuple((stream, seq) for stream, seq in emitted), _dispatch(after))
            for name in sorted(pieces) for node, emitted, after in json.loads(pieces[name])]


class Recorder:
    """The inproc tap: writes every emitted message of a recorded stream, and the run's schedule."""

    def __init__(self, spec: RecordSpec, graph: Graph):
        self.streams = set(spec.streams)
        self.writer = open_recording(spec, graph)
        self._schemas: dict[type[Message], dict[str, Any]] = {}
        self._emitted: list[tuple[str, int]] = []  # by the dispatch under way
        self._entries: list[list] = []
        self._pieces = 0

    def record(self, message: Message) -> None:
        if message.stream not in self.streams:
            return
        cls = type(message)
        if cls not in self._schemas:
            self._schemas[cls] = message_schema(cls)
        self.writer.write(message.to_payload(), message.stream, message.stamp_ns, time.monotonic_ns(),
                          message.seq, self._schemas[cls])
        self._emitted.append((message.stream, message.seq))

    def dispatched(self, dispatch: Dispatch, after: Dispatch | None = None) -> None:
        """`dispatch` is done: note what it emitted on recorded streams since the last one; a timeout
        is noted even if it emitted nothing, with `after`, the input or tick dispatched before it."""
        if self._emitted or dispatch.on == ON_TIMEOUT:
            self._entries.append([_dispatch_row(dispatch), self._emitted, _dispatch_row(after)])
            if len(self._entries) >= SCHEDULE_PIECE_ENTRIES:
                self._write_schedule()
        self._emitted = []

    def _write_schedule(self) -> None:
        self.writer.add_metadata(f"{SCHEDULE_METADATA}.{self._pieces:06d}",
                                 {SCHEDULE_ENTRIES_KEY: json.dumps(self._entries, separators=(",", ":"))})
        self._pieces += 1
        self._entries = []

    def close(self) -> None:
        self._write_schedule()  # at least one piece, empty or not: a replay knows the run has a schedule
        self.writer.close()


class RecordForwarder:
    """The zmq tap, in a worker: forwards its node's messages on recorded streams to the sink."""

    def __init__(self, context: zmq.Context, endpoint: str, streams: list[str]):
        self.streams = set(streams)
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, RECORD_HWM)
        self.socket.setsockopt(zmq.LINGER, RECORD_LINGER_MS)
        self.socket.connect(endpoint)
        self.dropped = 0  # given up on while the worker was asked to stop

    def forward(self, message: Message, should_stop: Callable[[], bool]) -> None:
        if message.stream not in self.streams:
            return
        payload = message.to_payload()
        envelope = msgpack.packb([message.stream, payload.type_name, message.stamp_ns, time.monotonic_ns(), message.seq])
        parts = [envelope, *encode(payload)]  # copy=True: the arrays may live in reusable shared memory
        while True:
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=True)
                return
            except zmq.Again:
                if should_stop():
                    self.dropped += 1
                    return
                self.socket.poll(POLL_MS, zmq.POLLOUT)

    def close(self) -> None:
        self.socket.close()  # lingers until the queued messages are with the sink


class RecordSink:
    """The zmq tap, in the supervisor: one thread receives what every worker forwards and writes it."""

    def __init__(self, spec: RecordSpec, graph: Graph, endpoint: str):
        self.endpoint = endpoint
        self.writer = open_recording(spec, graph)
        self.duplicates = 0
        self.lost = 0
        self._last_seq: dict[str, int] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="groundloop-record-sink", daemon=True)

    def start(self) -> None:
        """Bind (here, so workers can connect as soon as this returns), then receive in the thread."""
        self._socket = self._context.socket(zmq.PULL)
        self._socket.bind(self.endpoint)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready = self._socket.poll(POLL_MS)
            if not ready and self._stopping.is_set():
                return  # asked to stop and a whole poll period went by without a message
            try:
                if ready:
                    self._take(self._socket.recv_multipart())
                else:
                    self.writer.flush_if_due()
            except Exception:  # a full disk, a bad envelope: keep draining, so no worker waits on us
                self.lost += 1
                if self.lost == 1:
                    log.exception("recorder: could not write to %s", self.writer.path)

    def _take(self, parts: list[bytes]) -> None:
        stream, type_name, stamp_ns, published_ns, seq = msgpack.unpackb(parts[0], raw=False)
        if seq <= self._last_seq.get(stream, -1):
            self.duplicates += 1  # re-emitted by a restarted node
            return
        self._last_seq[stream] = seq
        if type_name not in self._schemas:  # a port's declared type is known; this covers a subclass of it
            cls = Message.registry.get(type_name)
            self._schemas[type_name] = message_schema(cls) if cls is not None else {"title": type_name}
        self.writer.write_frames(parts[1:], stream, type_name, stamp_ns, published_ns, seq, self._schemas[type_name])

    def close(self) -> None:
        """Write what is still queued, then the file's summary (call once every worker has exited)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._socket is not None:
            self._socket.close(linger=0)
        self._context.term()
        self.writer.close()
