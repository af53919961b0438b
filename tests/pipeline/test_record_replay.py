"""Recording runs and replaying them with recorded streams in place of their source nodes."""
from collections import defaultdict

import pytest
import yaml

from pipeline.cli import main
from pipeline.graph import GraphError, RecordSpec, build_graph, load_graph
from pipeline.harness import LOG_TIME, NodeHarness, recording_inputs
from pipeline.inproc import InprocExecutor
from pipeline.record import recorded_messages
from pipeline.replay import replay_graph
from pipeline.zmq_executor import ZmqExecutor
from streaming.recording import read_info, read_messages
from tests.pipeline.toy_nodes import Scale

TOY = "tests.pipeline.toy_nodes"
COUNT = 12
GAP_S = 0.3  # a pause the recorded source takes once, in the timing test
DOWNSTREAM = ("double/scaled", "add/sum")


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


@pytest.mark.slow
def test_the_embodied_loop_replays_with_the_robot_replaced(tmp_path):
    """The robot's recorded streams drive perception, planning and the action expert exactly as live.
    (The controller is left out: it closes the loop, and a replayed robot does not wait for its
    commands, so states and action chunks reach it in another interleaving than live.)"""
    live, replayed = tmp_path / "live.mcap", tmp_path / "replay.mcap"
    short = ["--set", "env.episodes=1", "--set", "env.max_episode_steps=10"]
    assert main(["record", "configs/pick_cube.yaml", "--out", str(live), *short]) == 0
    assert main(["replay", str(live), "--graph", "configs/pick_cube.yaml", "--replace", "env", "--speed", "0",
                 "--out", str(replayed)]) == 0
    for stream in ("env/state", "env/frame", "cloud/cloud", "planner/waypoints", "expert/actions"):
        ours, theirs = list(read_messages(live, {stream})), list(read_messages(replayed, {stream}))
        assert ours and [r.data for r in ours] == [r.data for r in theirs], stream  # bit-exact, stamps included
