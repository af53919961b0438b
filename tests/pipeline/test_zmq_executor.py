"""The zmq executor end to end: real processes, sockets and shared memory."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import yaml

from pipeline.graph import build_graph
from pipeline import zmq_executor
from pipeline.inproc import InprocExecutor
from pipeline.zmq_executor import GraphFailed, ZmqExecutor
from streaming.security import generate_keys
from streaming.shm import segments_with_prefix

pytestmark = pytest.mark.slow
TOY = "tests.pipeline.toy_nodes"


def chain(out, count=50, payload_bytes=0, period_s=0.0, scale=None, sink=None, value_edge=None, transport=None):
    raw = {"name": "chain", "nodes": [
        {"id": "counter", "uses": f"{TOY}.Counter", "params": {"count": count, "payload_bytes": payload_bytes, "period_s": period_s}},
        {"id": "double", "uses": f"{TOY}.Scale", "params": scale or {}, "inputs": {"value": "counter/value"}},
        {"id": "sink", "uses": f"{TOY}.Sink", "params": {"out": str(out), **(sink or {})},
         "inputs": {"value": value_edge or "double/scaled", "blob": "counter/blob"}},
    ]}
    if transport:
        raw["transport"] = transport
    return raw


def read_sink(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["value"] for r in rows if "value" in r], [r for r in rows if "blob_first" in r]


def by_node(metrics):
    return {m["node"]: m for m in metrics}


def run_zmq(raw, **kwargs):
    executor = ZmqExecutor(build_graph(raw, "test.yaml"), **kwargs)
    metrics = executor.run(max_seconds=90)
    assert segments_with_prefix(executor.shm_prefix) == []  # nothing leaked in /dev/shm
    assert not executor.run_dir.exists()
    return by_node(metrics)


def test_same_outputs_on_inproc_and_zmq_with_large_payloads(tmp_path):
    results = {}
    for name in ("inproc", "zmq"):
        out = tmp_path / f"{name}.jsonl"
        raw = chain(out, count=40, payload_bytes=2_000_000)
        if name == "inproc":
            InprocExecutor(build_graph(raw, "test.yaml")).run()
        else:
            metrics = run_zmq(raw)
            assert metrics["counter"]["shm_fallbacks"] == 0
        results[name] = read_sink(out)
    assert results["inproc"] == results["zmq"]
    values, blobs = results["zmq"]
    assert values == [2 * i for i in range(40)]
    assert [b["blob_first"] for b in blobs] == [i % 251 for i in range(40)]  # every 2 MB array intact


def totals(out, count=20):
    """Counter → Total → Total → Sink: each Total emits only when its input stream ends, so the sink
    gets the sum once the end has passed down the chain in order."""
    return {"name": "totals", "nodes": [
        {"id": "counter", "uses": f"{TOY}.Counter", "params": {"count": count}},
        {"id": "first", "uses": f"{TOY}.Total", "inputs": {"value": "counter/value"}},
        {"id": "second", "uses": f"{TOY}.Total", "inputs": {"value": "first/total"}},
        {"id": "sink", "uses": f"{TOY}.Sink", "params": {"out": str(out)}, "inputs": {"value": "second/total"}},
    ]}


def test_the_end_of_a_stream_reaches_every_node_downstream_in_order(tmp_path):
    for name in ("inproc", "zmq"):
        out = tmp_path / f"{name}.jsonl"
        raw = totals(out)
        if name == "inproc":
            InprocExecutor(build_graph(raw, "test.yaml")).run(max_seconds=60)
        else:
            run_zmq(raw)
        assert read_sink(out)[0] == [sum(range(20))], name


def test_latest_drops_under_a_slow_consumer(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=150, period_s=0.002, sink={"delay_s": 0.03},
                value_edge={"from": "double/scaled", "policy": "latest"})
    metrics = run_zmq(raw)
    values, _ = read_sink(out)
    dropped = sum(metrics["sink"]["drops"].values()) + sum(metrics["double"].get("sent_drops", {}).values())
    assert len(values) < 150 and dropped > 0
    assert values == sorted(values) and values[-1] == 2 * 149  # what arrives is ever newer, ending with the newest


def test_queue_loses_nothing_under_a_slow_consumer_and_bounds_its_depth(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=80, sink={"delay_s": 0.01}, value_edge={"from": "double/scaled", "policy": "queue", "size": 4})
    metrics = run_zmq(raw)
    values, _ = read_sink(out)
    assert values == [2 * i for i in range(80)]  # count in == count out, in order
    assert metrics["sink"]["max_queue_depth"]["value"] <= 4
    assert metrics["double"]["emitted"]["scaled"] == 80


def _kill_mid_stream(node_id: str, sink_file, after_values: int, killed: list, run_over: threading.Event) -> None:
    """SIGKILL the node's process once the sink has seen `after_values` messages: surely mid-stream.
    Waits as long as the run lasts (a loaded machine may take long to start the processes)."""
    while not run_over.is_set():
        seen = len(sink_file.read_text().splitlines()) if sink_file.exists() else 0
        if seen >= after_values:
            for process in psutil.Process().children(recursive=True):  # this test's own run only
                cmdline = process.cmdline()
                if "pipeline.zmq_worker" in cmdline and node_id in cmdline:
                    os.kill(process.pid, signal.SIGKILL)
                    killed.append(seen)
                    return
        time.sleep(0.02)


def test_kill_9_of_a_node_mid_stream_restarts_it_and_nothing_is_lost_or_doubled(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=300, period_s=0.01, payload_bytes=200_000)
    killed: list = []
    run_over = threading.Event()
    killer = threading.Thread(target=_kill_mid_stream, args=("double", out, 100, killed, run_over))
    killer.start()
    try:
        metrics = run_zmq(raw)
    finally:
        run_over.set()
        killer.join()
    assert killed and killed[0] < 2 * 300, "the test did not manage to kill the node mid-stream"
    values, blobs = read_sink(out)
    assert values == [2 * i for i in range(300)]  # at-least-once + de-duplication = exactly once
    assert len(blobs) == 300
    assert metrics["double"]["restarts"] == 1


def test_a_crash_inside_a_handler_is_restarted_with_backoff(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=30, scale={"crash_at": 10, "marker": str(tmp_path / "crashed")})
    metrics = run_zmq(raw)
    values, _ = read_sink(out)
    assert values == [2 * i for i in range(30)]
    assert metrics["double"]["restarts"] == 1


def test_a_slow_setup_is_not_taken_for_a_hang_but_a_hung_handler_is_restarted(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=20, scale={"setup_s": 4.0, "hang_at": 5, "marker": str(tmp_path / "hung")})
    raw["nodes"][1]["hang_timeout_s"] = 1.0  # applies once running: setup may take as long as it needs
    metrics = run_zmq(raw)
    values, _ = read_sink(out)
    assert values == [2 * i for i in range(20)]
    assert metrics["double"]["restarts"] == 1  # killed once, for the hang, never for the slow setup


def test_a_setup_holding_the_gil_is_not_taken_for_a_wedged_process(tmp_path, monkeypatch):
    monkeypatch.setattr(zmq_executor, "HEARTBEAT_SILENCE_S", 1.0)  # the limit for a running node, shortened
    out = tmp_path / "sink.jsonl"
    metrics = run_zmq(chain(out, count=5, scale={"setup_gil_s": 3}))
    assert read_sink(out)[0] == [2 * i for i in range(5)]
    assert metrics["double"]["restarts"] == 0


def test_a_node_failing_in_setup_stops_the_graph_with_its_error_and_is_not_restarted(tmp_path):
    raw = chain(tmp_path / "sink.jsonl", count=5, sink={"out": str(tmp_path / "missing-dir" / "sink.jsonl")})
    executor = ZmqExecutor(build_graph(raw, "test.yaml"))
    with pytest.raises(GraphFailed, match="node sink failed in setup.*FileNotFoundError.*missing-dir"):
        executor.run(max_seconds=60)
    assert executor.children["sink"].restarts == 0
    assert segments_with_prefix(executor.shm_prefix) == [] and not executor.run_dir.exists()


def test_sigterm_stops_every_process_and_leaks_nothing(tmp_path):
    graph_path = tmp_path / "long.yaml"
    graph_path.write_text(yaml.safe_dump(chain(tmp_path / "sink.jsonl", count=100000, period_s=0.01, payload_bytes=500_000)))
    before = set(segments_with_prefix("gl-"))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(graph_path), "--executor", "zmq"], env=env)
    try:
        deadline = time.monotonic() + 60  # a loaded machine may take a while to start three Python processes
        while len(children := psutil.Process(cli.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) >= 3
        time.sleep(2)  # let messages flow
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:  # a failed assertion must not leave a graph running
            cli.kill()
            cli.wait()
    time.sleep(0.2)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [name for name in set(segments_with_prefix("gl-")) - before if "-counter-blob-" in name]


def test_tcp_with_curve_keys_between_two_machines(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=30, payload_bytes=100_000, transport={
        "machines": {"robot": "127.0.0.1", "server": "127.0.0.1"}, "base_port": 25700 + os.getpid() % 500 * 4,
        "curve": True, "keys_dir": str(keys)})
    for node, machine in zip(raw["nodes"], ("robot", "server", "server")):
        node["machine"] = machine
    graph = build_graph(raw, "test.yaml")
    results = {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, ZmqExecutor(graph, machine=m).run(max_seconds=60)))
               for m in ("robot", "server")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values, blobs = read_sink(out)
    assert values == [2 * i for i in range(30)] and len(blobs) == 30
