"""The inproc executor: every node in one process, one thread, in a deterministic order.

Each emitted message is offered to its consumers at once, and consumers run in the order messages
were emitted (one global FIFO), before any source ticks again: that order is fixed by the graph and
the data, so two runs give the same outputs. Receivers get read-only views, as over a socket. A graph
with a `record` spec has every message of its recorded streams written as it is emitted.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from pipeline.graph import Graph
from pipeline.messages import Message
from pipeline.record import Recorder
from pipeline.runtime import NodeRunner

log = logging.getLogger("groundloop.inproc")
IDLE_WAIT_S = 0.001

#: observes every emitted message: (node id, port, message)
Tap = Callable[[str, str, Message], None]


class InprocExecutor:
    def __init__(self, graph: Graph, tap: Tap | None = None):
        self.graph = graph
        self.tap = tap
        self._ready: deque[str] = deque()  # node ids with a newly queued message, in emission order
        self.runners: dict[str, NodeRunner] = {}
        for node_id, spec in graph.nodes.items():
            self.runners[node_id] = NodeRunner(spec, graph.inputs_of(node_id), self._sender(node_id))
        self._next_tick = {n: 0.0 for n, s in graph.nodes.items() if s.cls.is_source()}
        self._stopped = False
        self._recorder: Recorder | None = None

    def _sender(self, node_id: str) -> Callable[[str, Message], None]:
        edges_by_port = {port: self.graph.outputs_of(node_id, port) for port in self.graph.nodes[node_id].cls.outputs}

        def send(port: str, message: Message) -> None:
            if self.tap is not None:
                self.tap(node_id, port, message)
            if self._recorder is not None:
                self._recorder.record(message)
            frozen = message.frozen_view()
            for edge in edges_by_port[port]:
                if self.runners[edge.target].offer(edge.target_port, frozen):
                    self._ready.append(edge.target)

        return send

    def stop(self) -> None:
        """Ask the run loop to finish after the current handler (e.g. from a signal handler)."""
        self._stopped = True

    def run(self, max_seconds: float | None = None, on_metrics: Callable[[list[dict]], None] | None = None,
            metrics_every_s: float | None = None) -> list[dict]:
        """Run until every source has finished and every queue is drained; per-node metrics."""
        started = time.monotonic()
        next_report = started + metrics_every_s if metrics_every_s else None
        for runner in self.runners.values():
            runner.setup()
        self._recorder = Recorder(self.graph.record, self.graph) if self.graph.record is not None else None
        try:
            while not self._stopped:
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    log.warning("graph %s: stopped after max_seconds=%s", self.graph.name, max_seconds)
                    break
                if next_report is not None and time.monotonic() >= next_report and on_metrics is not None:
                    on_metrics(self.metrics())
                    next_report += metrics_every_s
                for runner in self.runners.values():
                    runner.check_timeouts()
                if self._ready:
                    self.runners[self._ready.popleft()].step()
                    continue
                if not self._tick_sources():
                    break
        finally:
            for runner in self.runners.values():
                runner.close()
            if self._recorder is not None:
                self._recorder.close()
                self._recorder = None
        return self.metrics()

    def _tick_sources(self) -> bool:
        """Tick every live source that is due; False once none is live and nothing is queued."""
        live = [n for n in self._next_tick if not self.runners[n].finished]
        if not live:
            return any(r.pending() for r in self.runners.values())
        now = time.monotonic()
        due = [n for n in live if self._next_tick[n] <= now]
        if not due:
            waits = [self._next_tick[n] - now for n in live]
            timeouts = [t for r in self.runners.values() if (t := r.next_timeout()) is not None]
            time.sleep(max(0.0, min(waits + timeouts)))
            return True
        produced = False
        for node_id in due:
            rate = self.graph.nodes[node_id].rate_hz
            self._next_tick[node_id] = (max(self._next_tick[node_id], now - 1.0) + 1.0 / rate) if rate else now
            produced |= bool(self.runners[node_id].tick())
        if not produced and not self._ready:
            time.sleep(IDLE_WAIT_S)  # every source idle and nothing queued: let timeouts come due
        return True

    def metrics(self) -> list[dict]:
        return [runner.metrics.snapshot() for runner in self.runners.values()]
