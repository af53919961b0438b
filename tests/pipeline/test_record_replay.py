"""Recording runs and replaying them with recorded streams in place of their source nodes."""
import time
from collections import defaultdict
from typing import ClassVar

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from pipeline.cli import main
from pipeline.graph import GraphError, RecordSpec, build_graph, load_graph
from pipeline.harness import LOG_TIME, NodeHarness, recording_inputs
from pipeline.inproc import InprocExecutor
from pipeline.messages import Command, Tick
from pipeline.node import Node
from pipeline.record import ON_INPUT, ON_TICK, ON_TIMEOUT, Dispatch, read_schedule, recorded_messages
from pipeline.replay import replay_graph
from pipeline.zmq_executor import ZmqExecutor
from streaming.recording import read_info, read_messages
from tests.pipeline.toy_nodes import Scale

TOY = "tests.pipeline.toy_nodes"
COUNT = 12
GAP_S = 0.3  # a pause the recorded source takes once, in the timing test
DOWNSTREAM = ("double/scaled", "add/sum")
HERE = "tests.pipeline.test_record_replay"
LOOP_STEPS = 6
WATCHDOG_S = 0.2
SLOW_S = 0.5  # a perception step slower than the controller's watchdog
LOOP_DOWNSTREAM = ("sensor/cloud", "policy/chunk", "ctl/command")


# ---- a closed loop in miniature: the embodied graph's shape with Ticks (test doubles) ---------------


class PlantParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = LOOP_STEPS


class Plant(Node):
    """A robot: emits step t's state and frame together, then the next step only on the command
    answering step t (as RobotNode does)."""

    Params = PlantParams
    inputs = {"command": Command}
    outputs = {"state": Tick, "frame": Tick}

    def setup(self) -> None:
        self.step = -1

    def tick(self) -> bool | None:
        if self.step >= 0:
            return None if self.step < self.params.steps else False
        self.step = 0
        self._publish()
        return True

    def on_command(self, msg: Command) -> None:
        if msg.step == self.step:
            self.step += 1
            if self.step < self.params.steps:
                self._publish()

    def _publish(self) -> None:
        stamp = time.monotonic_ns()
        self.emit("state", Tick(value=self.step, stamp_ns=stamp))
        self.emit("frame", Tick(value=self.step, stamp_ns=stamp))


class SensorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slow_step: int = -1
    delay_s: float = 0.0


class Sensor(Node):
    """Perception: a frame in, a "cloud" out; `delay_s` longer on step `slow_step`."""

    Params = SensorParams
    inputs = {"frame": Tick}
    outputs = {"cloud": Tick}

    def on_frame(self, msg: Tick) -> None:
        if msg.value == self.params.slow_step:
            time.sleep(self.params.delay_s)
        self.emit("cloud", Tick(value=msg.value, stamp_ns=msg.stamp_ns))


class Policy(Node):
    """Acts once per step, when it has the state and the cloud of that step (as the action expert does)."""

    inputs = {"cloud": Tick, "state": Tick}
    outputs = {"chunk": Tick}

    def setup(self) -> None:
        self.seen: dict[str, Tick] = {}
        self.acted = -1

    def on_cloud(self, msg: Tick) -> None:
        self._observe("cloud", msg)

    def on_state(self, msg: Tick) -> None:
        self._observe("state", msg)

    def _observe(self, port: str, msg: Tick) -> None:
        self.seen[port] = msg
        steps = {m.value for m in self.seen.values()}
        if len(self.seen) == 2 and len(steps) == 1 and msg.value != self.acted:
            self.acted = msg.value
            self.emit("chunk", Tick(value=msg.value, stamp_ns=msg.stamp_ns))


class CtlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ignore_chunks: bool = False  # a changed controller: it only ever holds, on its watchdog


class Ctl(Node):
    """Commands each state with the newest chunk it has; holds when its watchdog fires first."""

    Params = CtlParams
    inputs = {"chunk": Tick, "state": Tick}
    outputs = {"command": Command}
    input_timeouts: ClassVar[dict[str, float]] = {"chunk": WATCHDOG_S}

    def setup(self) -> None:
        self.chunk: Tick | None = None
        self.waiting: Tick | None = None

    def on_state(self, msg: Tick) -> None:
        self.waiting = msg
        self._command(hold=False)

    def on_chunk(self, msg: Tick) -> None:
        self.chunk = msg
        self._command(hold=False)

    def on_timeout(self, port: str) -> None:
        self._command(hold=True)

    def _command(self, hold: bool) -> None:
        state = self.waiting
        if state is None or (not hold and (self.chunk is None or self.params.ignore_chunks)):
            return
        self.waiting = None
        used = -1 if hold else self.chunk.value
        self.emit("command", Command(action=np.array([state.value, used], np.float32), hold=hold, step=state.value,
                                     stamp_ns=state.stamp_ns))


def loop_graph(slow_step: int = -1) -> dict:
    return {"name": "loop", "nodes": [
        {"id": "plant", "uses": f"{HERE}.Plant", "inputs": {"command": {"from": "ctl/command", "policy": "latest"}}},
        {"id": "sensor", "uses": f"{HERE}.Sensor", "params": {"slow_step": slow_step, "delay_s": SLOW_S},
         "inputs": {"frame": {"from": "plant/frame", "policy": "latest"}}},
        {"id": "policy", "uses": f"{HERE}.Policy", "inputs": {"cloud": {"from": "sensor/cloud", "policy": "latest"},
                                                             "state": {"from": "plant/state", "policy": "latest"}}},
        {"id": "ctl", "uses": f"{HERE}.Ctl", "inputs": {"chunk": {"from": "policy/chunk", "policy": "queue", "size": 8},
                                                       "state": {"from": "plant/state", "policy": "latest"}}},
    ]}


def record_graph(graph, out: str):
    """Run `graph` on inproc recording every stream to `out`; the recording's (stream, seq) in order."""
    graph.record = RecordSpec(out, [f"{n}/{p}" for n, s in graph.nodes.items() for p in s.cls.outputs])
    InprocExecutor(graph).run(max_seconds=30)
    return [(r.stream, m.seq) for r, m in recorded_messages(out)]


def commands(path: str) -> list[tuple[int, int, bool]]:
    """(step, step of the chunk it used (-1: none), hold) of each recorded command."""
    return [(m.step, int(m.action[1]), m.hold) for _, m in recorded_messages(path, {"ctl/command"})]


def toy_graph(count: int = COUNT, period_s: float = 0.0, payload_bytes: int = 64) -> dict:
    return {"name": "toy", "nodes": [
        {"id": "counter", "uses": f"{TOY}.Counter", "params": {"count": count, "payload_bytes": payload_bytes, "period_s": period_s}},
        {"id": "double", "uses": f"{TOY}.Scale", "inputs": {"value": "counter/value"}},
        {"id": "add", "uses": f"{TOY}.Add", "inputs": {"a": "counter/value", "b": "double/scaled"}},
        {"id": "sink", "uses": f"{TOY}.Sink", "inputs": {"value": "add/sum", "blob": "counter/blob"}},
    ]}


def write_graph(tmp_path, raw: dict, name: str = "toy.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def run_inproc(graph, stop_after: int | None = None) -> dict[str, list[tuple[int, int]]]:
    """(seq, value) of every emitted message, per stream; stops the run after `stop_after` counter values."""
    seen: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def tap(node: str, port: str, message) -> None:
        seen[message.stream].append((message.seq, getattr(message, "value", None)))
        if stop_after is not None and len(seen["counter/value"]) >= stop_after:
            executor.stop()

    executor = InprocExecutor(graph, tap=tap)
    executor.run(max_seconds=60)
    return seen


def record_toy(tmp_path, raw: dict | None = None, streams: list[str] | None = None) -> tuple[str, str, dict]:
    file = write_graph(tmp_path, raw or toy_graph())
    graph = load_graph(file)
    out = str(tmp_path / "live.mcap")
    graph.record = RecordSpec(out, streams or [f"{n}/{p}" for n, s in graph.nodes.items() for p in s.cls.outputs])
    return file, out, run_inproc(graph)


def test_record_then_replay_gives_the_live_downstream_outputs(tmp_path):
    file, recording, live = record_toy(tmp_path)
    info = read_info(recording)
    assert info.complete and info.counts["counter/value"] == COUNT and info.counts["add/sum"] == 2 * COUNT
    assert [m.value for _, m in recorded_messages(recording, {"counter/value"})] == list(range(COUNT))

    replays = [run_inproc(replay_graph(file, recording, ["counter"], speed=0)) for _ in range(2)]
    assert replays[0] == replays[1]  # deterministic on inproc
    for stream in ("counter/value", *DOWNSTREAM):
        assert replays[0][stream] == live[stream], stream
    stamps = {m.seq: m.stamp_ns for _, m in recorded_messages(recording, {"counter/value"})}
    scaled = [m for _, m in recorded_messages(recording, {"double/scaled"})]
    assert [m.stamp_ns for m in scaled] == [stamps[m.seq] for m in scaled]  # recorded stamps travel downstream


def test_a_replayed_closed_loop_meets_its_inputs_in_the_live_order(tmp_path):
    """The plant emits step t + 1 while it handles command t, with perception's and the policy's work
    for step t still queued; a replay that gave step t + 1 only once the graph was quiet would let the
    controller see chunk t first, and command otherwise."""
    file = write_graph(tmp_path, loop_graph())
    live, replayed = str(tmp_path / "live.mcap"), str(tmp_path / "replayed.mcap")
    live_order = record_graph(load_graph(file), live)
    # the controller answers step t at once with the newest chunk it has, from step t - 2 (an ungated
    # replay: t - 1); not a design to copy, but one whose outputs show the interleaving
    assert commands(live) == [(0, 0, False), (1, 0, False)] + [(t, t - 2, False) for t in range(2, LOOP_STEPS)]
    schedule = read_schedule(live)
    answers = [e for e in schedule if e.dispatch.node == "plant"]
    assert answers[0].dispatch == Dispatch("plant", ON_TICK, "", 0)
    assert [e.dispatch for e in answers[1:]] == [Dispatch("plant", ON_INPUT, "command", t) for t in range(LOOP_STEPS - 1)]
    assert answers[1].emitted == (("plant/state", 1), ("plant/frame", 1))

    for _ in range(2):
        assert record_graph(replay_graph(file, live, ["plant"], speed=0), replayed) == live_order  # every message, in order
        for stream in ("plant/state", *LOOP_DOWNSTREAM):
            assert [r.data for r in read_messages(replayed, {stream})] == [r.data for r in read_messages(live, {stream})], stream


@pytest.mark.parametrize("slow_live", [True, False])
def test_a_replay_fires_input_timeouts_where_the_recorded_run_did_not_by_the_clock(tmp_path, slow_live):
    """Live, a slow perception step lets the controller's watchdog fire (or not); a replay as slow or
    as fast as it likes holds exactly where the live run held."""
    file = write_graph(tmp_path, loop_graph(slow_step=0))
    live, replayed = str(tmp_path / "live.mcap"), str(tmp_path / "replayed.mcap")
    live_order = record_graph(load_graph(file, [] if slow_live else ["sensor.delay_s=0"]), live)
    held = [hold for _, _, hold in commands(live)]
    assert held[0] is slow_live and not any(held[1:])
    fired = [e for e in read_schedule(live) if e.dispatch.on == ON_TIMEOUT and e.dispatch.node == "ctl"]
    if slow_live:
        assert fired[-1].after == Dispatch("sensor", ON_INPUT, "frame", 0) and fired[-1].emitted == (("ctl/command", 0),)
    replay = replay_graph(file, live, ["plant"], speed=0, overrides=["sensor.delay_s=0"] if slow_live else [])
    assert record_graph(replay, replayed) == live_order
    for stream in LOOP_DOWNSTREAM:
        assert [r.data for r in read_messages(replayed, {stream})] == [r.data for r in read_messages(live, {stream})], stream


def test_a_replay_whose_graph_changed_falls_back_to_the_clocks_timeouts(tmp_path):
    """A controller that no longer answers from chunks leaves the replayed plant waiting: its watchdog
    then fires by the clock, as live, and the replay goes on to the end (the recording's last state,
    whose answer nothing waits for)."""
    file = write_graph(tmp_path, loop_graph())
    live = str(tmp_path / "live.mcap")
    record_graph(load_graph(file), live)
    graph = replay_graph(file, live, ["plant"], speed=0, overrides=["ctl.ignore_chunks=true"])
    seen = run_inproc(graph)
    assert [v for _, v in seen["plant/state"]] == list(range(LOOP_STEPS))
    assert [seq for seq, _ in seen["ctl/command"]] == list(range(LOOP_STEPS - 1))


def test_a_replayed_source_keeps_the_recorded_stamps_at_any_speed_and_the_gaps_at_speed_one(tmp_path):
    recorded = tmp_path / "paced.mcap"
    raw = toy_graph(count=4, period_s=GAP_S, payload_bytes=0)
    file = write_graph(tmp_path, raw)
    main(["record", file, "--out", str(recorded), "--streams", "counter/value,counter/blob"])
    original = [(r.log_time_ns, r.payload().fields["value"]) for r in read_messages(recorded)]
    for speed in ("0", "1"):
        out = tmp_path / f"replay_{speed}.mcap"
        assert main(["replay", str(recorded), "--graph", file, "--replace", "counter", "--speed", speed, "--out", str(out)]) == 0
        assert read_info(out).counts["counter/blob"] == 0  # recorded, though nothing came
        replayed = list(read_messages(out, {"counter/value"}))
        assert [(r.log_time_ns, r.payload().fields["value"]) for r in replayed] == original
        if speed == "1":  # emitted no sooner than the recorded gaps say (a lower bound: load only adds)
            recorded_span = original[-1][0] - original[0][0]
            assert replayed[-1].publish_time_ns - replayed[0].publish_time_ns >= recorded_span - GAP_S * 1e9 / 10


def test_loop_plays_the_recording_again_with_stamps_still_increasing(tmp_path):
    file, recording, live = record_toy(tmp_path)
    graph = replay_graph(file, recording, ["counter"], speed=0, loop=True)
    graph_out = str(tmp_path / "looped.mcap")
    graph.record = RecordSpec(graph_out, ["counter/value"])
    looped = run_inproc(graph, stop_after=3 * COUNT)
    assert [v for _, v in looped["counter/value"]] == list(range(COUNT)) * 3
    assert [s for s, _ in looped["counter/value"]] == list(range(3 * COUNT))  # seqs go on: nothing is a duplicate
    stamps = [r.log_time_ns for r in read_messages(graph_out)]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    assert [v for _, v in looped["add/sum"]][:2 * COUNT] == [v for _, v in live["add/sum"]]


def test_a_recording_without_a_consumed_stream_is_an_error_naming_it(tmp_path):
    file, recording, _ = record_toy(tmp_path, streams=["counter/value"])
    with pytest.raises(GraphError, match="no stream 'counter/blob'") as caught:
        replay_graph(file, recording, ["counter"])
    assert caught.value.node == "sink" and caught.value.field == "inputs.blob"
    assert main(["replay", recording, "--graph", file, "--replace", "counter"]) == 2
    with pytest.raises(GraphError, match="no such node"):
        replay_graph(file, recording, ["nobody"])


def test_the_harness_takes_its_inputs_from_a_recording(tmp_path):
    _, recording, _ = record_toy(tmp_path)
    inputs = recording_inputs(recording, {"value": "counter/value"})
    assert inputs[0].t_s == 0.0 and [i.t_s for i in inputs] == sorted(i.t_s for i in inputs)
    outputs = NodeHarness(Scale, {"factor": 3}).run(inputs)
    assert [o.message.value for o in outputs] == [3 * v for v in range(COUNT)]
    assert [o.message.seq for o in outputs] == list(range(COUNT))
    by_capture = recording_inputs(recording, {"value": "counter/value"}, clock=LOG_TIME)
    assert [i.message.stamp_ns for i in by_capture] == sorted(i.message.stamp_ns for i in by_capture)
    with pytest.raises(ValueError, match="no stream 'counter/nothing'"):
        recording_inputs(recording, {"value": "counter/nothing"})


def test_a_record_key_in_the_graph_records_every_run_and_is_validated(tmp_path):
    raw = toy_graph()
    raw["record"] = {"out": str(tmp_path / "keyed.mcap"), "streams": ["counter/value", "add/sum"]}
    assert main(["run", write_graph(tmp_path, raw)]) == 0
    assert read_info(tmp_path / "keyed.mcap").counts == {"counter/value": COUNT, "add/sum": 2 * COUNT}
    raw["record"]["streams"] = ["add/total"]
    with pytest.raises(GraphError, match="record.streams\\[0\\]: no output 'total' on node 'add'"):
        build_graph(raw, "keyed.yaml")
    raw["record"] = {"streams": ["add/sum"]}
    with pytest.raises(GraphError, match="record.out"):
        build_graph(raw, "keyed.yaml")


def test_cli_record_rejects_unknown_streams_and_repairs_files(tmp_path, capsys):
    file = write_graph(tmp_path, toy_graph())
    assert main(["record", file, "--out", str(tmp_path / "x.mcap"), "--streams", "counter/valu"]) == 2
    assert "no output 'valu' on node 'counter'" in capsys.readouterr().err
    _, recording, _ = record_toy(tmp_path)
    assert main(["record", "--repair", recording]) == 0
    assert f"{4 * COUNT + COUNT} messages saved" in capsys.readouterr().out


@pytest.mark.slow
def test_zmq_records_the_same_streams_as_inproc(tmp_path):
    raw = toy_graph(payload_bytes=200_000)  # large enough to travel through shared memory
    streams = ["counter/value", "counter/blob", "double/scaled"]
    contents = {}
    for name, executor in (("inproc", InprocExecutor), ("zmq", ZmqExecutor)):
        graph = build_graph(raw, "toy.yaml")
        graph.record = RecordSpec(str(tmp_path / f"{name}.mcap"), streams)
        executor(graph).run(max_seconds=90)
        contents[name] = {s: [(m.seq, getattr(m, "value", None), m.stamp_ns if s != "counter/blob" else m.data.tobytes())
                              for _, m in recorded_messages(graph.record.out, {s})] for s in streams}
        assert read_info(graph.record.out).complete
    for stream in streams:
        assert [row[:2] for row in contents["zmq"][stream]] == [row[:2] for row in contents["inproc"][stream]], stream
    blobs = [data for _, _, data in contents["zmq"]["counter/blob"]]
    assert [b[0] for b in blobs] == [i % 251 for i in range(COUNT)] and {len(b) for b in blobs} == {200_000}
