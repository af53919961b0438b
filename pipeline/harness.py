"""The node test harness: feed one node timed messages, collect what it emits. No processes, no sockets.

    harness = NodeHarness(Controller, {"max_step_m": 0.01})
    outputs = harness.run([TimedInput(0.00, "actions", chunk), TimedInput(0.05, "state", state)])

Time is virtual: each input is delivered at its own `t_s`, per-input timeouts fire on that clock, and
each output records the virtual time at which it was emitted. Inputs go through the same runtime as
in a graph (policies, de-duplication by seq), so a node behaves here as it does in a run. Inputs can
come from a recorded run:

    harness.run(recording_inputs("run.mcap", {"cloud": "cloud/cloud", "state": "env/state"}))
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.graph import DEFAULT_QUEUE_SIZE, POLICY_QUEUE, Edge, NodeSpec
from pipeline.messages import Message
from pipeline.node import Node
from pipeline.record import recorded_messages
from pipeline.runtime import NodeRunner
from streaming.recording import RecordingError, read_info

#: which recorded time becomes an input's time: when it was emitted (its arrival in the run), or its capture stamp
PUBLISH_TIME, LOG_TIME = "publish", "log"
NS_PER_S = 1_000_000_000


@dataclass
class TimedInput:
    t_s: float
    port: str
    message: Message


@dataclass
class Output:
    t_s: float
    port: str
    message: Message


def recording_inputs(path: str | Path, ports: dict[str, str], clock: str = PUBLISH_TIME) -> list[TimedInput]:
    """The recorded messages of the streams in `ports` (input port -> "node/port") as timed inputs,
    with their recorded seqs; times are seconds after the first of them, by `clock`."""
    if clock not in (PUBLISH_TIME, LOG_TIME):
        raise ValueError(f"clock must be {PUBLISH_TIME!r} or {LOG_TIME!r}, got {clock!r}")
    recorded_streams = read_info(path).streams
    missing = sorted(set(ports.values()) - set(recorded_streams))
    if missing:
        raise RecordingError(f"{path}: no stream {missing[0]!r} (recorded: {', '.join(sorted(recorded_streams)) or 'none'})")
    timed: list[tuple[int, str, Message]] = []
    for recorded, message in recorded_messages(path, set(ports.values())):
        time_ns = recorded.publish_time_ns if clock == PUBLISH_TIME else recorded.log_time_ns
        timed.extend((time_ns, port, message) for port, stream in ports.items() if stream == recorded.stream)
    start_ns = min((time_ns for time_ns, _, _ in timed), default=0)
    return [TimedInput((time_ns - start_ns) / NS_PER_S, port, message) for time_ns, port, message in timed]


class NodeHarness:
    def __init__(self, node_cls: type[Node], params: dict[str, Any] | None = None, *,
                 timeouts_s: dict[str, float] | None = None, policies: dict[str, str] | None = None,
                 node_id: str = "node_under_test"):
        node_cls.check_declaration()
        self.now = 0.0
        self.outputs: list[Output] = []
        spec = NodeSpec(id=node_id, uses=node_cls.__name__, cls=node_cls, params=node_cls.validate_params(params or {}, node_id))
        edges = [
            Edge("harness", port, node_id, port, (policies or {}).get(port, POLICY_QUEUE),
                 DEFAULT_QUEUE_SIZE if (policies or {}).get(port, POLICY_QUEUE) == POLICY_QUEUE else 1,
                 (timeouts_s or {}).get(port, node_cls.input_timeouts.get(port)))
            for port in node_cls.inputs
        ]
        self.runner = NodeRunner(spec, edges, self._collect, clock=lambda: self.now)
        self.node = self.runner.node
        self._seq: dict[str, int] = {}
        self._set_up = False

    def _collect(self, port: str, message: Message) -> None:
        self.outputs.append(Output(self.now, port, message.frozen_view()))

    def setup(self) -> None:
        if not self._set_up:
            self.runner.setup()
            self._set_up = True

    def send(self, port: str, message: Message, t_s: float | None = None) -> list[Output]:
        """Deliver one message (and run the handler); the outputs it caused."""
        return self.run([TimedInput(self.now if t_s is None else t_s, port, message)])

    def run(self, inputs: Iterable[TimedInput], until_s: float | None = None) -> list[Output]:
        """Deliver `inputs` in time order, firing timeouts between them; the outputs they caused."""
        self.setup()
        first = len(self.outputs)
        for item in sorted(inputs, key=lambda i: i.t_s):
            if item.port not in self.runner.queues:
                raise KeyError(f"{self.runner.spec.cls.__name__} has no input {item.port!r}")
            self._advance(item.t_s)
            message = item.message
            if message.seq < 0:  # unstamped: number it like a producer would
                message.seq = self._seq[item.port] = self._seq.get(item.port, -1) + 1
            self.runner.offer(item.port, message.frozen_view())
            while self.runner.step() is not None:
                pass
        if until_s is not None:
            self._advance(until_s)
        return self.outputs[first:]

    def tick(self, n: int = 1, dt_s: float = 0.0) -> list[Output]:
        """Tick a source `n` times, `dt_s` apart; the outputs."""
        self.setup()
        first = len(self.outputs)
        for _ in range(n):
            self._advance(self.now + dt_s)
            if self.runner.tick() is False:
                break
        return self.outputs[first:]

    def _advance(self, t_s: float) -> None:
        """Move the clock to `t_s`, firing every timeout that falls due on the way."""
        while True:
            wait = self.runner.next_timeout()
            if wait is None or self.now + wait > t_s:
                break
            self.now += wait
            self.runner.check_timeouts()
        self.now = max(self.now, t_s)

    def close(self) -> None:
        self.runner.close()

    @property
    def metrics(self) -> dict:
        return self.runner.metrics.snapshot()
