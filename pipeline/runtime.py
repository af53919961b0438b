"""What every executor does around a node: input queues with their policy, de-duplication by seq,
stamping outputs, per-input timeouts, handler timing and error containment.

Executors only move messages: inproc calls `offer` directly, zmq after decoding a frame. Time comes
from an injectable clock so the test harness can replay timed inputs deterministically.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.graph import POLICY_LATEST, Edge, NodeSpec
from pipeline.messages import Message
from pipeline.metrics import NodeMetrics
from pipeline.node import Loaner, Node

log = logging.getLogger("groundloop.runtime")

Sender = Callable[[str, Message], None]


@dataclass
class _Pending:
    arrival: int
    port: str
    message: Message


class InputQueue:
    """One input's buffer: `latest` keeps only the newest, `queue` keeps everything up to its size
    (the transport's flow control keeps it from growing past that)."""

    def __init__(self, port: str, policy: str, size: int):
        self.port, self.policy, self.size = port, policy, size
        self.items: deque[_Pending] = deque()

    def put(self, item: _Pending) -> _Pending | None:
        """Add `item`; the item it superseded on a `latest` input, if any."""
        dropped = self.items.popleft() if self.policy == POLICY_LATEST and self.items else None
        self.items.append(item)
        return dropped


class NodeRunner:
    def __init__(self, spec: NodeSpec, in_edges: list[Edge], send: Sender,
                 clock: Callable[[], float] = time.monotonic, node: Node | None = None, loaner: Loaner | None = None):
        self.spec = spec
        self.node = node if node is not None else spec.cls(spec.params, node_id=spec.id)
        self.metrics = NodeMetrics(spec.id)
        self.metrics.counters = self.node.counters
        self.metrics.progress = self.node.progress
        self.clock = clock
        self._send = send
        self.edges = {edge.target_port: edge for edge in in_edges}
        self.queues = {e.target_port: InputQueue(e.target_port, e.policy, e.size) for e in in_edges}
        self.processed_seq: dict[str, int] = {port: -1 for port in self.edges}  # de-duplication
        self.out_seq: dict[str, int] = {port: 0 for port in spec.cls.outputs}  # next seq per output
        now = clock()
        self._last_input = {port: now for port in self.edges}
        self._arrivals = itertools.count()
        self.node.attach(self._emit, loaner)
        self.finished = False
        self.inputs_ended = False

    # ---- life cycle ---------------------------------------------------------------------------

    def setup(self) -> None:
        self.node.setup()

    def close(self) -> None:
        try:
            self.node.close()
        except Exception:
            log.exception("node %s: close() failed", self.spec.id)

    # ---- inputs -------------------------------------------------------------------------------

    def offer(self, port: str, message: Message) -> bool:
        """Queue `message` for input `port`; False if it was a duplicate or superseded at once."""
        self.metrics.received[port] += 1
        self._last_input[port] = self.clock()
        if message.seq <= self.processed_seq[port]:
            self.metrics.duplicates[port] += 1
            return False
        queue = self.queues[port]
        if any(item.message.seq == message.seq for item in queue.items):
            self.metrics.duplicates[port] += 1
            return False
        dropped = queue.put(_Pending(next(self._arrivals), port, message))
        if dropped is not None:
            self.metrics.drops[port] += 1
        self.metrics.set_depth(port, len(queue.items))
        return True

    def pending(self) -> int:
        return sum(len(q.items) for q in self.queues.values())

    def step(self) -> tuple[str, int] | None:
        """Run the handler for the oldest queued message; its (port, seq), or None if idle."""
        heads = [q.items[0] for q in self.queues.values() if q.items]
        if not heads:
            return None
        item = min(heads, key=lambda p: p.arrival)
        queue = self.queues[item.port]
        queue.items.popleft()
        self.metrics.set_depth(item.port, len(queue.items))
        handler = getattr(self.node, Node.handler(item.port))
        started = time.perf_counter()
        try:
            handler(item.message)
        except Exception:
            self.metrics.handler_errors += 1
            log.exception("node %s: handler for input %r failed on seq %d", self.spec.id, item.port, item.message.seq)
        self.metrics.record_handler(item.port, time.perf_counter() - started)
        self.processed_seq[item.port] = item.message.seq
        return item.port, item.message.seq

    def tick(self) -> bool | None:
        """One tick of a source: True if it produced, None if idle, False once it is finished."""
        if self.finished:
            return False
        started = time.perf_counter()
        try:
            result = self.node.tick()
        except Exception:
            self.metrics.handler_errors += 1
            log.exception("node %s: tick() failed; the source stops", self.spec.id)
            result = False
        if result is not None:
            self.metrics.record_tick(time.perf_counter() - started)
        self.finished = result is False
        return result

    def end_inputs(self) -> None:
        """The end of the node's input streams (once): `on_inputs_ended`, errors contained."""
        if self.inputs_ended:
            return
        self.inputs_ended = True
        try:
            self.node.on_inputs_ended()
        except Exception:
            self.metrics.handler_errors += 1
            log.exception("node %s: on_inputs_ended() failed", self.spec.id)

    @property
    def ended(self) -> bool:
        """Will emit nothing more: done ticking (if a source) and done with its inputs (if it has any)."""
        return (self.finished or not self.spec.cls.is_source()) and (self.inputs_ended or not self.edges)

    def check_timeouts(self) -> None:
        now = self.clock()
        for port, edge in self.edges.items():
            if edge.timeout_s is not None and now - self._last_input[port] >= edge.timeout_s - 1e-9:
                self._last_input[port] = now  # fire once per timeout period of silence
                self.metrics.timeouts[port] += 1
                try:
                    self.node.on_timeout(port)
                except Exception:
                    self.metrics.handler_errors += 1
                    log.exception("node %s: on_timeout(%r) failed", self.spec.id, port)

    def next_timeout(self) -> float | None:
        """Seconds until the earliest input timeout, if any input has one."""
        now = self.clock()
        waits = [e.timeout_s - (now - self._last_input[p]) for p, e in self.edges.items() if e.timeout_s is not None]
        return max(min(waits), 0.0) if waits else None

    # ---- outputs ------------------------------------------------------------------------------

    def _emit(self, port: str, message: Message) -> None:
        message.stream = f"{self.spec.id}/{port}"
        message.seq = self.out_seq[port]
        self.out_seq[port] += 1
        self.metrics.emitted[port] += 1
        self._send(port, message)
