"""Edges over ZeroMQ with per-edge delivery policy, credit-based flow control and redelivery.

Each producing node binds one ROUTER socket; each consuming node connects one DEALER (identity = its
node id) to every upstream producer. Consumers drive the protocol, so a restarted consumer — or a
restarted producer — resynchronises by itself:

    consumer -> producer   HELLO  {incarnation, processed: {edge: seq}}   on start and every 0.5 s
    consumer -> producer   ACK    {edge: [received_upto, processed_upto]}
    consumer -> producer   EOSACK {edge}
    producer -> consumer   DATA   edge, seq, *message frames
    producer -> consumer   EOS    edge, last seq

Lossless edges (`queue`, size S): the producer keeps at most S messages sent but not processed, so
the consumer's queue never exceeds S; a producer with more to send blocks (backpressure). Messages
stay with the producer until processed, and a consumer that comes back with a new incarnation gets
every message after its last processed seq again (it de-duplicates by seq): nothing lost, nothing
doubled. Latest edges: at most `window` messages in flight; newer messages replace an unsent one.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

log = logging.getLogger("groundloop.transport")

HELLO, ACK, EOSACK, DATA, EOS = b"HELLO", b"ACK", b"EOSACK", b"DATA", b"EOS"
HELLO_PERIOD_S = 0.5
LATEST_WINDOW = 2


@dataclass
class EdgeConfig:
    """One edge as its producer sees it."""

    edge_id: str
    port: str  # the producer's output port
    consumer: str  # the consumer's node id (its DEALER identity)
    lossless: bool
    window: int
    reader_index: int


@dataclass
class _Outgoing:
    seq: int
    frames: list
    shm: list[tuple[str, int, int]]  # (segment, reader, generation) flags this message holds


@dataclass
class _EdgeState:
    config: EdgeConfig
    incarnation: str | None = None  # of the consumer; None until its HELLO
    outbox: deque[_Outgoing] = field(default_factory=deque)  # not sent yet
    unacked: deque[_Outgoing] = field(default_factory=deque)  # sent, not yet processed (or received)
    received_upto: int = -1
    processed_upto: int = -1
    drops: int = 0
    ended_seq: int | None = None  # set when the producer finished
    eos_acked: bool = False


#: clears a shared-memory flag of a message that will not be delivered: (segment, reader, generation)
Releaser = Callable[[str, int, int], None]


class Publisher:
    """The producer side of every edge leaving one node."""

    def __init__(self, context: zmq.Context, endpoint: str, edges: list[EdgeConfig],
                 release: Releaser | None = None, curve_secret_key: bytes | None = None):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer: an error, not a silent drop
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted consumer takes over its identity
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        if curve_secret_key is not None:
            self.socket.curve_server = True
            self.socket.curve_secretkey = curve_secret_key
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.edges = {e.edge_id: _EdgeState(e) for e in edges}
        self.by_port: dict[str, list[_EdgeState]] = {}
        for state in self.edges.values():
            self.by_port.setdefault(state.config.port, []).append(state)
        self._release = release or (lambda segment, reader, generation: None)
        self.finished = False

    def readers(self, port: str) -> list[int]:
        return [s.config.reader_index for s in self.by_port.get(port, [])]

    def publish(self, port: str, seq: int, frames: list, shm: list[tuple[str, int, int]] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> None:
        """Queue a message on every edge of `port` and send what flow control allows; blocks while
        a lossless edge is full (backpressure)."""
        for state in self.by_port.get(port, []):
            reader = state.config.reader_index
            own = [entry for entry in (shm or []) if entry[1] == reader]
            if not state.config.lossless:
                while state.outbox:  # superseded before it could be sent
                    self._forget(state.outbox.popleft())
                    state.drops += 1
            state.outbox.append(_Outgoing(seq, frames, own))
        self.pump(0)
        while any(s.outbox and s.config.lossless for s in self.by_port.get(port, [])) and not should_stop():
            self.pump(50)

    def pump(self, timeout_ms: int) -> None:
        """Send what flow control allows, handle consumers' messages (waiting up to `timeout_ms` for the
        first), then send what their acknowledgements allow."""
        for state in self.edges.values():
            self._send_allowed(state)
        if self.socket.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(frames)
        for state in self.edges.values():
            self._send_allowed(state)

    def _handle(self, frames: list[bytes]) -> None:
        identity, kind, body = frames[0], frames[1], frames[2] if len(frames) > 2 else b""
        try:
            content = msgpack.unpackb(body, raw=False) if body else {}
        except Exception:
            log.warning("publisher %s: malformed control message from %r", self.endpoint, identity)
            return
        consumer = identity.decode(errors="replace")
        if kind == HELLO:
            for edge_id, processed in content.get("processed", {}).items():
                state = self.edges.get(edge_id)
                if state is not None and state.config.consumer == consumer:
                    self._on_hello(state, content.get("incarnation"), int(processed))
        elif kind == ACK:
            for edge_id, (received, processed) in content.items():
                state = self.edges.get(edge_id)
                if state is not None:
                    self._on_ack(state, int(received), int(processed))
        elif kind == EOSACK:
            state = self.edges.get(content.get("edge", ""))
            if state is not None:
                state.eos_acked = True

    def _on_hello(self, state: _EdgeState, incarnation: str | None, processed: int) -> None:
        if incarnation == state.incarnation:
            if state.ended_seq is not None and not state.outbox and not state.unacked:
                self._send_eos(state)  # the consumer may have missed it
            return
        restarted = state.incarnation is not None
        state.incarnation = incarnation
        if restarted:
            log.info("edge %s: consumer came back (incarnation %s); resending after seq %d", state.config.edge_id, incarnation, processed)
        # everything sent but not processed goes again, in order, ahead of what was never sent
        resend = [m for m in state.unacked if m.seq > processed] if state.config.lossless else []
        for message in state.unacked:
            if not (state.config.lossless and message.seq > processed):
                self._forget(message)
        state.unacked.clear()
        state.outbox.extendleft(reversed(resend))
        state.received_upto = state.processed_upto = processed
        state.eos_acked = False

    def _on_ack(self, state: _EdgeState, received: int, processed: int) -> None:
        state.received_upto = max(state.received_upto, received)
        state.processed_upto = max(state.processed_upto, processed)
        done_upto = state.processed_upto if state.config.lossless else state.received_upto
        while state.unacked and state.unacked[0].seq <= done_upto:
            state.unacked.popleft()  # the reader clears its own flag when it lets go of the arrays

    def _send_allowed(self, state: _EdgeState) -> None:
        if state.incarnation is None:
            return
        while state.outbox and len(state.unacked) < state.config.window:
            message = state.outbox[0]
            try:
                self.socket.send_multipart([state.config.consumer.encode(), DATA, state.config.edge_id.encode(),
                                            message.seq.to_bytes(8, "little", signed=True), *message.frames], copy=False)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:  # consumer gone; its next HELLO resumes the edge
                    state.incarnation = None
                    return
                raise
            state.outbox.popleft()
            state.unacked.append(message)
        if state.ended_seq is not None and not state.outbox and not state.unacked and not state.eos_acked:
            self._send_eos(state)

    def _send_eos(self, state: _EdgeState) -> None:
        try:
            self.socket.send_multipart([state.config.consumer.encode(), EOS, state.config.edge_id.encode(),
                                        int(state.ended_seq).to_bytes(8, "little", signed=True)])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise

    def _forget(self, message: _Outgoing) -> None:
        """`message` will never reach its reader: give back the shared memory it holds for it."""
        for segment, reader, generation in message.shm:
            self._release(segment, reader, generation)

    def finish(self, last_seq: dict[str, int]) -> None:
        """No more messages: each consumer gets EOS once it has everything."""
        self.finished = True
        for state in self.edges.values():
            state.ended_seq = last_seq.get(state.config.port, -1)

    def drained(self, lossless_only: bool = True) -> bool:
        """Every consumer has acknowledged the end (EOS on `latest` edges is best effort)."""
        return all(s.eos_acked for s in self.edges.values() if s.config.lossless or not lossless_only)

    def processed_upto(self, port: str) -> int | None:
        """The last seq of `port` that every lossless consumer has processed; None if none is lossless."""
        marks = [s.processed_upto for s in self.by_port.get(port, []) if s.config.lossless]
        return min(marks) if marks else None

    def drops(self) -> dict[str, int]:
        return {edge_id: s.drops for edge_id, s in self.edges.items()}

    def close(self) -> None:
        self.socket.close(linger=500)  # let a last EOS go out


@dataclass
class InputEdge:
    """One edge as its consumer sees it."""

    edge_id: str
    producer: str
    reader_index: int


class Subscriber:
    """The consumer side: one DEALER to each upstream producer."""

    def __init__(self, context: zmq.Context, node_id: str, incarnation: str, endpoints: dict[str, str],
                 edges: list[InputEdge], processed: dict[str, int],
                 curve_keys: tuple[bytes, bytes, bytes] | None = None):
        self.node_id, self.incarnation = node_id, incarnation
        self.edges = {e.edge_id: e for e in edges}
        self.processed = {e.edge_id: processed.get(e.edge_id, -1) for e in edges}
        self.received = dict(self.processed)
        self.ended: set[str] = set()
        self.sockets: dict[str, zmq.Socket] = {}
        for producer in sorted({e.producer for e in edges}):
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.IDENTITY, node_id.encode())
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, 0)
            if curve_keys is not None:
                socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = curve_keys
            socket.connect(endpoints[producer])
            self.sockets[producer] = socket
        self._last_hello = 0.0
        self.hello()

    def hello(self) -> None:
        self._last_hello = time.monotonic()
        for producer, socket in self.sockets.items():
            mine = {e: self.processed[e] for e, edge in self.edges.items() if edge.producer == producer and e not in self.ended}
            if mine:
                socket.send_multipart([HELLO, msgpack.packb({"incarnation": self.incarnation, "processed": mine})])

    def maybe_hello(self) -> None:
        if time.monotonic() - self._last_hello >= HELLO_PERIOD_S:
            self.hello()

    def receive(self, socket: zmq.Socket) -> list[tuple[str, int, list[Any]]]:
        """Everything waiting on `socket`: (edge, seq, message frames); EOS noted in `ended`."""
        out = []
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            kind, edge_id = frames[0].bytes, frames[1].bytes.decode()
            seq = int.from_bytes(frames[2].bytes, "little", signed=True)
            if edge_id not in self.edges:
                continue
            if kind == DATA:
                self.received[edge_id] = max(self.received[edge_id], seq)
                out.append((edge_id, seq, frames[3:]))
            elif kind == EOS:  # sent only after everything before it was delivered
                self.ended.add(edge_id)
                socket.send_multipart([EOSACK, msgpack.packb({"edge": edge_id})])
        return out

    def mark_ended(self, producer: str) -> None:
        """`producer` finished before this consumer (re)started; it exits only when everything it
        sent was processed, so nothing more will come from it."""
        self.ended.update(e for e, edge in self.edges.items() if edge.producer == producer)

    def ack(self, edge_id: str, processed: int | None = None) -> None:
        if processed is not None:
            self.processed[edge_id] = max(self.processed[edge_id], processed)
        producer = self.edges[edge_id].producer
        body = msgpack.packb({edge_id: [self.received[edge_id], self.processed[edge_id]]})
        self.sockets[producer].send_multipart([ACK, body])

    def all_ended(self) -> bool:
        return len(self.ended) == len(self.edges)

    def close(self) -> None:
        for socket in self.sockets.values():
            socket.close(linger=0)
