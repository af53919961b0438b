"""Replay: recorded streams stand in for the nodes that produced them, and the rest of the graph runs live.

`replay_graph` swaps each replaced node for a `ReplaySource` with the same id, outputs and inputs, so
every edge stays as it was (policies included) and consumers get the recorded messages on the same
streams, under the recorded stamps: "as if live".

Order: a replayed node emits each recorded message where the live node did, as far as the rest of
the graph can tell. The recording's schedule (see pipeline.record) says what each emission answered:
a tick (a robot's first state of an episode), an input (a robot emits step t + 1 while it handles
the command for step t) or an input timeout. A tick's messages are emitted by tick(); an input's
while the replayed node handles that input (that seq, or a later one on the same port); a timeout's
when that timeout fires. So a replayed robot still waits for the command answering each step, and
every downstream node meets its inputs in the live interleaving — which `latest` edges make matter.
A recording without a schedule (made on zmq) plays every message as a tick, messages captured
together (one stamp, e.g. a robot's state and camera frame of one step) in one tick.

Timing: speed 1 keeps the recorded gaps between stamps (an answer to an input waits in its handler,
as the live node took that long), speed s divides them by s, speed 0 emits as fast as the graph
takes them. With `loop`, the recording plays again with its stamps shifted past the previous pass, so
they keep increasing, and a pass counts the inputs it waits for from those handled before it.

Determinism: on the inproc executor, a replay of an inproc recording also fires every input timeout
where the live run fired it (right after the same dispatch, `RecordedTimeouts`) instead of by the
wall clock, so a watchdog that fired live because a handler was slow fires at the same point, and
none fires because the replay is faster or slower. Only if the replay stalls — a replayed node waits
for an input that does not come, because a node has changed since the recording — does the clock
take over, so that watchdogs act as they would live. With that, every downstream output of an inproc
replay is the recorded run's, at any speed, and two replays give the same outputs.
"""
from __future__ import annotations

import copy
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.graph import Graph, GraphError, build_graph, load_graph
from pipeline.messages import Message
from pipeline.node import Node, resolve_node_class
from pipeline.record import ON_INPUT, ON_TICK, ON_TIMEOUT, Dispatch, ScheduleEntry, read_schedule, recorded_messages
from streaming.recording import read_info

REPLAY_USES = "pipeline.replay.ReplaySource"
MAX_BLOCK_S = 0.02  # a message due this soon is waited for inside tick(), for accurate timing
NS_PER_S = 1_000_000_000
KEPT_NODE_KEYS = ("id", "inputs", "machine", "restart", "hang_timeout_s", "startup_timeout_s", "resources")


class ReplayParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recording: str
    replaces: str = Field(description="the `uses` of the node replayed: its ports are this node's")
    speed: float = Field(1.0, ge=0, description="1: recorded timing, s: s times faster, 0: as fast as possible")
    loop: bool = False


@dataclass(frozen=True)
class _Gate:
    """What the live node was doing when it emitted a burst: handling input `port` up to `seq`, or
    timing out on `port` for the (`seq` + 1)-th time."""

    on: str  # ON_INPUT or ON_TIMEOUT
    port: str
    seq: int


@dataclass
class _Burst:
    """Messages the live node emitted in one dispatch (or, without a schedule, under one stamp)."""

    stamp_ns: int
    gate: _Gate | None  # None: emitted by a tick
    messages: list[tuple[str, Message]] = field(default_factory=list)


class ReplaySource(Node):
    """Emits the recorded outputs of the node whose id it takes (see the module docstring)."""

    Params = ReplayParams

    @classmethod
    def specialize(cls, params: ReplayParams) -> type[Node]:
        """The replay class for `params.replaces`: a ReplaySource with that node kind's ports."""
        return _replay_class(resolve_node_class(params.replaces))

    def setup(self) -> None:
        self._ports = {f"{self.node_id}/{port}": port for port in self.outputs}
        self._handled = {port: -1 for port in self.inputs}  # the newest seq handled per input
        self._timeouts = {port: 0 for port in self.inputs}  # timeouts per input
        self._input_base = dict.fromkeys(self.inputs, 0)  # what the pass under way counts from
        self._timeout_base = dict.fromkeys(self.inputs, 0)
        self._bursts = self._play(read_schedule(self.params.recording) or [])
        self._pending: _Burst | None = None
        self._origin: tuple[float, int] | None = None  # (wall clock, stamp) of the first burst

    @property
    def awaiting_input(self) -> bool:
        """Its next burst answers an input or a timeout that has not come yet."""
        burst = self._pending
        return burst is not None and burst.gate is not None and not self._open(burst.gate)

    def tick(self) -> bool | None:
        burst = self._next()
        if burst is None:
            return False
        if (burst.gate is not None and not self._open(burst.gate)) or not self._due(burst, MAX_BLOCK_S):
            return None
        self._emit_pending()
        return True

    def handle_input(self, port: str, message: Message) -> None:
        """Every input's handler: emit what the live node emitted in answer to it."""
        self._handled[port] = max(self._handled[port], message.seq)
        self._release()

    def on_timeout(self, port: str) -> None:
        self._timeouts[port] += 1
        self._release()

    def close(self) -> None:
        bursts = getattr(self, "_bursts", None)
        if bursts is not None:
            bursts.close()  # closes the recording it is reading

    def _release(self) -> None:
        """Emit now every next burst that answers what has been handled (tick bursts wait for tick())."""
        while (burst := self._next()) is not None and burst.gate is not None and self._open(burst.gate):
            self._due(burst, None)
            self._emit_pending()

    def _open(self, gate: _Gate) -> bool:
        if gate.on == ON_INPUT:
            return self._handled.get(gate.port, -1) >= self._input_base.get(gate.port, 0) + gate.seq
        return self._timeouts.get(gate.port, 0) > self._timeout_base.get(gate.port, 0) + gate.seq

    def _next(self) -> _Burst | None:
        if self._pending is None:
            self._pending = next(self._bursts, None)
        return self._pending

    def _due(self, burst: _Burst, max_wait_s: float | None) -> bool:
        """Wait until the burst is due at the replay's speed; False (without waiting) if that is more
        than `max_wait_s` away."""
        if not self.params.speed:
            return True
        if self._origin is None:
            self._origin = (time.monotonic(), burst.stamp_ns)
        started, first_ns = self._origin
        wait = started + (burst.stamp_ns - first_ns) / NS_PER_S / self.params.speed - time.monotonic()
        if max_wait_s is not None and wait > max_wait_s:
            return False
        if wait > 0:
            time.sleep(wait)
        return True

    def _emit_pending(self) -> None:
        burst, self._pending = self._pending, None
        for port, message in burst.messages:
            self.emit(port, message)

    def _play(self, schedule: list[ScheduleEntry]) -> Iterator[_Burst]:
        """The recording's bursts, pass after pass with `loop`, stamps shifted past the previous pass."""
        causes: dict[tuple[str, int], tuple[int, _Gate | None]] = {}
        for index, entry in enumerate(schedule):
            dispatch = entry.dispatch
            if dispatch.node == self.node_id:
                gate = None if dispatch.on == ON_TICK else _Gate(dispatch.on, dispatch.port, dispatch.seq)
                causes.update({emitted: (index, gate) for emitted in entry.emitted})
        offset_ns = 0
        while True:
            self._input_base = {port: seq + 1 for port, seq in self._handled.items()}
            self._timeout_base = dict(self._timeouts)
            bursts = 0
            low_ns = high_ns = None
            burst: _Burst | None = None
            burst_key: object = None
            for recorded, message in recorded_messages(self.params.recording, set(self._ports)):
                message.stamp_ns = recorded.log_time_ns + offset_ns
                cause, gate = causes.get((recorded.stream, message.seq), (None, None))
                key = ("stamp", message.stamp_ns) if cause is None else ("dispatch", cause)
                if burst is not None and key != burst_key:
                    yield burst
                    burst = None
                if burst is None:
                    burst, burst_key = _Burst(message.stamp_ns, gate), key
                    bursts += 1
                burst.messages.append((self._ports[recorded.stream], message))
                low_ns = message.stamp_ns if low_ns is None else min(low_ns, message.stamp_ns)
                high_ns = message.stamp_ns if high_ns is None else max(high_ns, message.stamp_ns)
            if burst is not None:
                yield burst
            if not self.params.loop or burst is None:
                return
            span_ns = high_ns - low_ns
            offset_ns += span_ns + max(span_ns // max(bursts - 1, 1), 1)  # one mean gap after the last


def _input_handler(port: str) -> Callable[[ReplaySource, Message], None]:
    def handle(self: ReplaySource, message: Message) -> None:
        self.handle_input(port, message)

    handle.__name__ = Node.handler(port)
    return handle


@functools.cache
def _replay_class(original: type[Node]) -> type[Node]:
    namespace = {Node.handler(port): _input_handler(port) for port in original.inputs}
    namespace.update(inputs=dict(original.inputs), outputs=dict(original.outputs),
                     input_timeouts=dict(original.input_timeouts), __module__=__name__, __doc__=ReplaySource.__doc__)
    return type(f"ReplaySource[{original.__name__}]", (ReplaySource,), namespace)


class RecordedTimeouts:
    """The input timeouts of a recorded run by where they fired: after which dispatch (None: before any)."""

    def __init__(self, schedule: Sequence[ScheduleEntry]):
        self._after: dict[Dispatch | None, list[Dispatch]] = defaultdict(list)
        for entry in schedule:
            if entry.dispatch.on == ON_TIMEOUT:
                self._after[entry.after].append(entry.dispatch)

    def after(self, dispatch: Dispatch | None) -> list[Dispatch]:
        """The timeouts that fired right after `dispatch`, in order (each is given out once)."""
        return self._after.pop(dispatch, [])


def recorded_timeouts(graph: Graph) -> RecordedTimeouts | None:
    """For a graph that replays one inproc recording: that run's timeouts. None for any other graph."""
    recordings = {spec.params.recording for spec in graph.nodes.values() if issubclass(spec.cls, ReplaySource)}
    schedule = read_schedule(recordings.pop()) if len(recordings) == 1 else None
    return None if schedule is None else RecordedTimeouts(schedule)


def replay_graph(file: str | Path, recording: str | Path, replace: Sequence[str], *, speed: float = 1.0,
                 loop: bool = False, overrides: list[str] | None = None) -> Graph:
    """The graph of `file` with the nodes in `replace` played from `recording`.

    Every stream the graph consumes from a replaced node must be in the recording, with a type its
    consumers take; otherwise a GraphError names the stream and the input that needs it."""
    graph = load_graph(file, overrides)
    info = read_info(recording)
    raw = copy.deepcopy(graph.raw)
    raw.pop("record", None)  # a replay records only when asked to (it must not overwrite its own input)
    raw_nodes = {node["id"]: node for node in raw["nodes"]}
    for node_id in replace:
        spec = graph.nodes.get(node_id)
        if spec is None:
            raise GraphError(graph.file, node_id, "--replace", f"no such node (nodes: {', '.join(graph.nodes)})")
        for edge in graph.outputs_of(node_id):
            stream = f"{node_id}/{edge.source_port}"
            recorded = info.streams.get(stream)
            where = f"inputs.{edge.target_port}"
            if recorded is None:
                raise GraphError(graph.file, edge.target, where,
                                 f"the recording {recording} has no stream {stream!r}, which this input takes from "
                                 f"the replaced node {node_id!r} (recorded: {', '.join(sorted(info.streams)) or 'none'})")
            recorded_cls = Message.registry.get(recorded)
            expected = spec.cls.outputs[edge.source_port]
            if recorded_cls is None or not issubclass(recorded_cls, expected):
                raise GraphError(graph.file, edge.target, where,
                                 f"the recording's stream {stream!r} carries {recorded or 'an unknown type'}, "
                                 f"{node_id}/{edge.source_port} carries {expected.__name__}")
        kept = {key: raw_nodes[node_id][key] for key in KEPT_NODE_KEYS if key in raw_nodes[node_id]}
        raw_nodes[node_id].clear()
        raw_nodes[node_id].update(kept, uses=REPLAY_USES, params={
            "recording": str(Path(recording).resolve()), "replaces": spec.uses, "speed": speed, "loop": loop})
    return build_graph(raw, graph.file)
