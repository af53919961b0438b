import numpy as np
import pytest
import yaml
from pipeline.graph import build_graph
from pipeline.harness import NodeHarness, TimedInput
from pipeline.inproc import InprocExecutor
from pipeline.messages import Command, Message, Tick
from pipeline.node import Node, ParamsError
from tests.pipeline.toy_nodes import Add, Counter, Scale

TOY = "tests.pipeline.toy_nodes"


def test_inproc_runs_a_graph_deterministically():
    raw = {"name": "fan", "nodes": [
        {"id": "counter", "uses": f"{TOY}.Counter", "params": {"count": 5}},
        {"id": "double", "uses": f"{TOY}.Scale", "inputs": {"value": "counter/value"}},
        {"id": "add", "uses": f"{TOY}.Add", "inputs": {"a": "counter/value", "b": "double/scaled"}},
    ]}
    runs = []
    for _ in range(2):
        seen = []
        executor = InprocExecutor(build_graph(raw, "fan.yaml"), tap=lambda n, p, m: seen.append((n, p, m.seq, getattr(m, "value", None))))
        metrics = executor.run()
        runs.append(seen)
    assert runs[0] == runs[1]
    sums = [value for node, port, _, value in runs[0] if node == "add"]
    assert sums == [0, 0, 1, 3, 4, 6, 7, 9, 10, 12]  # a arrives before b for each counter value
    by_node = {m["node"]: m for m in metrics}
    assert by_node["add"]["received"] == {"a": 5, "b": 5} and by_node["double"]["emitted"] == {"scaled": 5}


def test_receivers_get_read_only_arrays():
    class Mutator(Node):
        inputs = {"cmd": Command}

        def on_cmd(self, msg: Command) -> None:
            msg.action[0] = 1.0

    harness = NodeHarness(Mutator)
    harness.send("cmd", Command(action=np.zeros(3, np.float32)))
    assert harness.metrics["handler_errors"] == 1  # the write was refused, the node kept running


def test_harness_feeds_timed_inputs_and_fires_timeouts():
    class Watchdog(Node):
        inputs = {"value": Tick}
        outputs = {"alarm": Tick}

        def on_value(self, msg: Tick) -> None:
            pass

        def on_timeout(self, port: str) -> None:
            self.emit("alarm", Tick(value=0))

    harness = NodeHarness(Watchdog, timeouts_s={"value": 0.1})
    outputs = harness.run([TimedInput(0.0, "value", Tick(value=1)), TimedInput(0.05, "value", Tick(value=2)),
                           TimedInput(0.32, "value", Tick(value=3))], until_s=0.40)
    # silence after 0.05 fires at 0.15 and 0.25; the input at 0.32 re-arms it, so nothing by 0.40
    assert [round(o.t_s, 3) for o in outputs] == [0.15, 0.25]
    assert harness.metrics["timeouts"] == {"value": 2}


def test_harness_deduplicates_by_seq_like_a_graph():
    harness = NodeHarness(Scale, {"factor": 3})
    outputs = harness.run([TimedInput(0, "value", Tick(value=1, seq=0)), TimedInput(0, "value", Tick(value=1, seq=0)),
                           TimedInput(0, "value", Tick(value=2, seq=1))])
    assert [o.message.value for o in outputs] == [3, 6]
    assert [o.message.seq for o in outputs] == [0, 1]
    assert harness.metrics["duplicates"] == {"value": 1}


def test_harness_ticks_sources_until_they_finish():
    harness = NodeHarness(Counter, {"count": 3})
    outputs = harness.tick(10)
    assert [o.message.value for o in outputs] == [0, 1, 2]


def test_nodes_validate_params_and_ports():
    with pytest.raises(ParamsError, match="params.factor"):
        Scale({"factor": "two"})
    node = Add(node_id="adder")
    with pytest.raises(RuntimeError, match="before an executor"):
        node.emit("sum", Tick())
    node.attach(lambda port, message: None)
    with pytest.raises(KeyError, match="no output port 'total'"):
        node.emit("total", Tick())
    with pytest.raises(TypeError, match="carries Tick, got Command"):
        node.emit("sum", Command(action=np.zeros(1)))


def test_a_node_without_a_handler_is_refused():
    class Broken(Node):
        inputs = {"value": Tick}

    with pytest.raises(TypeError, match="no handler on_value"):
        Broken.check_declaration()


def test_messages_round_trip_through_payloads():
    original = Command(action=np.arange(7, dtype=np.float32), hold=True, reason="watchdog", frame_id="base")
    original.seq, original.stream = 4, "controller/command"
    back = Message.from_payload(original.to_payload())
    assert isinstance(back, Command) and back.hold and back.reason == "watchdog" and back.seq == 4
    np.testing.assert_array_equal(back.action, original.action)


def test_unknown_message_fields_are_codec_errors():
    from streaming.codec import CodecError, Payload

    with pytest.raises(CodecError, match="unknown fields"):
        Message.from_payload(Payload("Tick", {"value": 1, "bogus": 2}, {}))
    with pytest.raises(CodecError, match="unknown message type"):
        Message.from_payload(Payload("Nope", {}, {}))


def test_progress_inside_one_long_handler_reaches_the_metrics_callback_as_it_goes():
    raw = {"name": "long_job", "nodes": [
        {"id": "counter", "uses": "tests.pipeline.toy_nodes.Counter", "params": {"count": 1}},
        {"id": "job", "uses": "tests.pipeline.toy_nodes.LongJob", "params": {"steps": 6, "step_s": 0.03},
         "inputs": {"value": "counter/value"}},
    ]}
    seen: list[int] = []

    def on_metrics(snapshots):
        progress = {s["node"]: s["progress"] for s in snapshots}["job"]
        if progress:
            seen.append(progress["done"])

    final = InprocExecutor(build_graph(raw, "job.yaml")).run(on_metrics=on_metrics, metrics_every_s=0.01)
    assert 1 <= len(seen) and seen == sorted(seen) and seen[0] < 6  # reported while the handler ran
    assert {s["node"]: s["progress"] for s in final}["job"] == {"done": 6, "total": 6, "unit": "steps"}


def test_groundloop_run_draws_progress_bars_when_asked(tmp_path, capsys):
    from pipeline.cli import main

    graph = tmp_path / "job.yaml"
    graph.write_text(yaml.safe_dump({"name": "long_job", "nodes": [
        {"id": "counter", "uses": "tests.pipeline.toy_nodes.Counter", "params": {"count": 1}},
        {"id": "job", "uses": "tests.pipeline.toy_nodes.LongJob", "params": {"steps": 4, "step_s": 0.2},
         "inputs": {"value": "counter/value"}}]}))
    assert main(["run", str(graph), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "job:" in err and "4/4" in err and "steps" in err
