"""The inproc executor: every node in one process, one thread, in a deterministic order.

Each emitted message is offered to its consumers at once, and consumers run in the order messages
were emitted (one global FIFO), before any source ticks again: that order is fixed by the graph and
the data, so two runs give the same outputs — as long as no input timeout fires, for timeouts come
from the wall clock. Receivers get read-only views, as over a socket. A graph with a `record` spec has
every message of its recorded streams written as it is emitted, and the run's schedule: what each
dispatch emitted, and where each timeout fired (pipeline.record). A graph that replays such a
recording fires the recorded timeouts where they fired instead of by the clock (pipeline.replay).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from pipeline.graph import Graph
from pipeline.messages import Message
from pipeline.record import ON_INPUT, ON_TICK, ON_TIMEOUT, Dispatch, Recorder
from pipeline.replay import RecordedTimeouts, ReplaySource, recorded_timeouts
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
        self._ticks = dict.fromkeys(self._next_tick, 0)  # producing ticks per source
        self._replayed = [r.node for r in self.runners.values() if isinstance(r.node, ReplaySource)]
        self._stopped = False
        self._recorder: Recorder | None = None
        self._timeouts: RecordedTimeouts | None = None  # a replay's recorded timeouts
        self._last_dispatch: Dispatch | None = None
        self._idle = False  # the last pass found nothing queued and no source produced

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

        def report_if_due() -> None:
            nonlocal next_report
            if next_report is not None and on_metrics is not None and time.monotonic() >= next_report:
                on_metrics(self.metrics())
                next_report = time.monotonic() + metrics_every_s

        self._timeouts = recorded_timeouts(self.graph)
        for runner in self.runners.values():
            runner.node.on_progress = report_if_due  # a long handler reports while it runs: one thread here
            runner.setup()
        self._recorder = Recorder(self.graph.record, self.graph) if self.graph.record is not None else None
        try:
            self._fire_recorded_timeouts(None)
            while not self._stopped:
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    log.warning("graph %s: stopped after max_seconds=%s", self.graph.name, max_seconds)
                    break
                report_if_due()
                if self._clock_timeouts():
                    self._check_timeouts()
                if self._ready:
                    node_id = self._ready.popleft()
                    handled = self.runners[node_id].step()
                    if handled is not None:
                        self._dispatched(Dispatch(node_id, ON_INPUT, *handled))
                    continue
                if not self._tick_sources() and not self._end_streams():
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
        self._idle = True  # nothing is queued (else we would not be here): until a source produces
        now = time.monotonic()
        due = [n for n in live if self._next_tick[n] <= now]
        if not due:
            waits = [self._next_tick[n] - now for n in live]
            clock = self._clock_timeouts()
            timeouts = [t for r in self.runners.values() if clock and (t := r.next_timeout()) is not None]
            time.sleep(max(0.0, min(waits + timeouts)))
            return True
        for node_id in due:
            rate = self.graph.nodes[node_id].rate_hz
            self._next_tick[node_id] = (max(self._next_tick[node_id], now - 1.0) + 1.0 / rate) if rate else now
            if self.runners[node_id].tick():
                self._dispatched(Dispatch(node_id, ON_TICK, seq=self._ticks[node_id]))
                self._ticks[node_id] += 1
        if self._idle:
            time.sleep(IDLE_WAIT_S)  # every source idle and nothing queued: let timeouts come due
        return True

    def _end_streams(self) -> bool:
        """Every source finished and nothing queued: end the inputs of the nodes whose producers have
        all ended (the nodes of a cycle together); False once every node has ended."""
        waiting = [n for n, r in self.runners.items() if not r.ended]  # sources have finished: nodes with inputs
        ready = [n for n in waiting if all(self.runners[e.source].ended for e in self.graph.inputs_of(n))]
        for node_id in ready or waiting:  # none ready: what is left waits on itself, a cycle
            self.runners[node_id].end_inputs()
        return bool(waiting)

    def _clock_timeouts(self) -> bool:
        """Whether input timeouts fire by the clock: always, except in a replay that follows its
        recording's timeouts, until it stalls (idle, and a replayed node waits for an input)."""
        return self._timeouts is None or (self._idle and any(node.awaiting_input for node in self._replayed))

    def _check_timeouts(self) -> None:
        for node_id, runner in self.runners.items():
            before = dict(runner.metrics.timeouts)
            runner.check_timeouts()
            for port, count in runner.metrics.timeouts.items():
                if count != before.get(port, 0):
                    self._timed_out(Dispatch(node_id, ON_TIMEOUT, port, before.get(port, 0)))

    def _fire_recorded_timeouts(self, anchor: Dispatch | None) -> None:
        """Fire the timeouts the recorded run fired right after `anchor`, as it fired them."""
        if self._timeouts is None:
            return
        for recorded in self._timeouts.after(anchor):
            runner = self.runners.get(recorded.node)
            if runner is None or recorded.port not in runner.edges:
                log.warning("graph %s: the recording has a timeout of %s/%s, which this graph lacks",
                            self.graph.name, recorded.node, recorded.port)
                continue
            timeout = Dispatch(recorded.node, ON_TIMEOUT, recorded.port, runner.metrics.timeouts[recorded.port])
            runner.metrics.timeouts[recorded.port] += 1
            try:
                runner.node.on_timeout(recorded.port)
            except Exception:
                runner.metrics.handler_errors += 1
                log.exception("node %s: on_timeout(%r) failed", recorded.node, recorded.port)
            self._timed_out(timeout)

    def _dispatched(self, dispatch: Dispatch) -> None:
        """A node handled an input or produced in a tick: note it, then fire what the recording fired after it."""
        self._last_dispatch = dispatch
        self._idle = False
        if self._recorder is not None:
            self._recorder.dispatched(dispatch)
        self._fire_recorded_timeouts(dispatch)

    def _timed_out(self, timeout: Dispatch) -> None:
        if self._recorder is not None:
            self._recorder.dispatched(timeout, after=self._last_dispatch)

    def metrics(self) -> list[dict]:
        return [runner.metrics.snapshot() for runner in self.runners.values()]
