"""Replay: recorded streams stand in for the nodes that produced them, and the rest of the graph runs live.

`replay_graph` swaps each replaced node for a `ReplaySource` with the same id and the same outputs,
so every consumer keeps its edges (policies included) and gets the recorded messages on the same
streams, in the recorded order, under the recorded stamps: "as if live". Its inputs are dropped (a
replayed robot takes no commands). Messages captured together (one stamp, e.g. a robot's state and
camera frame of one step) are emitted in one tick, as the recorded node emitted them.

Timing: speed 1 keeps the recorded gaps between stamps, speed s divides them by s, speed 0 emits as
fast as the graph takes them. With `loop`, the recording plays again with its stamps shifted past the
previous pass, so they keep increasing. On the inproc executor, each tick's messages are handled to
the end before the next tick, so a replay gives the same outputs every run.
"""
from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.graph import Graph, GraphError, build_graph, load_graph
from pipeline.messages import Message
from pipeline.node import Node, resolve_node_class
from pipeline.record import recorded_messages
from streaming.recording import read_info

REPLAY_USES = "pipeline.replay.ReplaySource"
MAX_BLOCK_S = 0.02  # a message due this soon is waited for inside tick(), for accurate timing
NS_PER_S = 1_000_000_000
KEPT_NODE_KEYS = ("id", "machine", "restart", "hang_timeout_s", "startup_timeout_s")


class ReplayParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recording: str
    replaces: str = Field(description="the `uses` of the node replayed: its outputs are this node's")
    speed: float = Field(1.0, ge=0, description="1: recorded timing, s: s times faster, 0: as fast as possible")
    loop: bool = False


@dataclass
class _Burst:
    """Messages recorded under one stamp: emitted in one tick."""

    stamp_ns: int
    messages: list[tuple[str, Message]] = field(default_factory=list)


class ReplaySource(Node):
    """Emits the recorded outputs of the node whose id it takes (see the module docstring)."""

    Params = ReplayParams

    @classmethod
    def specialize(cls, params: ReplayParams) -> type[Node]:
        """The replay class for `params.replaces`: a ReplaySource with that node kind's outputs."""
        return _replay_class(resolve_node_class(params.replaces))

    def setup(self) -> None:
        self._ports = {f"{self.node_id}/{port}": port for port in self.outputs}
        self._bursts = self._play()
        self._pending: _Burst | None = None
        self._origin: tuple[float, int] | None = None  # (wall clock, stamp) of the first burst

    def tick(self) -> bool | None:
        burst = self._pending or next(self._bursts, None)
        if burst is None:
            return False
        self._pending = burst
        if self.params.speed:
            if self._origin is None:
                self._origin = (time.monotonic(), burst.stamp_ns)
            started, first_ns = self._origin
            wait = started + (burst.stamp_ns - first_ns) / NS_PER_S / self.params.speed - time.monotonic()
            if wait > MAX_BLOCK_S:
                return None
            if wait > 0:
                time.sleep(wait)
        self._pending = None
        for port, message in burst.messages:
            self.emit(port, message)
        return True

    def close(self) -> None:
        bursts = getattr(self, "_bursts", None)
        if bursts is not None:
            bursts.close()  # closes the recording it is reading

    def _play(self) -> Iterator[_Burst]:
        """The recording's bursts, pass after pass with `loop`, stamps shifted past the previous pass."""
        offset_ns = 0
        while True:
            bursts = 0
            low_ns = high_ns = None
            burst: _Burst | None = None
            for recorded, message in recorded_messages(self.params.recording, set(self._ports)):
                message.stamp_ns = recorded.log_time_ns + offset_ns
                if burst is not None and burst.stamp_ns != message.stamp_ns:
                    yield burst
                    burst = None
                if burst is None:
                    burst = _Burst(message.stamp_ns)
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


@functools.cache
def _replay_class(original: type[Node]) -> type[Node]:
    return type(f"ReplaySource[{original.__name__}]", (ReplaySource,),
                {"outputs": dict(original.outputs), "__module__": __name__, "__doc__": ReplaySource.__doc__})


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
