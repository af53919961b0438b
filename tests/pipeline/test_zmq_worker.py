"""A worker process's receive path, driven by a hand-made upstream that sends garbage."""
import json
import threading
import time

import msgpack
import zmq

from pipeline.messages import Tick
from pipeline.zmq_worker import Worker
from streaming.codec import encode
from streaming.transport import EdgeConfig, Publisher

EDGE = "counter/value->sink/value"


def test_malformed_frames_are_counted_and_the_node_keeps_running(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = {"name": "t", "nodes": [
        {"id": "counter", "uses": "tests.pipeline.toy_nodes.Counter"},
        {"id": "sink", "uses": "tests.pipeline.toy_nodes.Sink", "params": {"out": str(out)}, "inputs": {"value": "counter/value"}},
    ]}
    endpoints = {n: {"bind": f"ipc://{tmp_path}/{n}.sock", "connect": f"ipc://{tmp_path}/{n}.sock"} for n in ("counter", "sink")}
    plan = {"graph": raw, "file": "t.yaml", "run_dir": str(tmp_path), "shm_prefix": "gl-t", "use_shm": False,
            "endpoints": endpoints, "control": f"ipc://{tmp_path}/control.sock", "keys_dir": None}
    context = zmq.Context()
    control = context.socket(zmq.PULL)
    control.bind(plan["control"])
    upstream = Publisher(context, endpoints["counter"]["bind"], [EdgeConfig(EDGE, "value", "sink", True, 16, 0)])
    worker = Worker(plan, "sink", "t.1", [])
    thread = threading.Thread(target=worker.run)
    thread.start()

    upstream.publish("value", 0, encode(Tick(value=5, seq=0).to_payload()))
    upstream.publish("value", 1, [b"not a message at all"])
    upstream.publish("value", 2, encode(Tick(value=7, seq=2).to_payload()))
    upstream.finish({"value": 2})
    deadline = time.monotonic() + 10
    while not upstream.drained() and time.monotonic() < deadline:
        upstream.pump(20)
    thread.join(timeout=10)

    assert [json.loads(line)["value"] for line in out.read_text().splitlines()] == [5, 7]
    reports = []
    while control.poll(100):
        reports.append(msgpack.unpackb(control.recv(), raw=False))
    final = [r for r in reports if r["event"] == "done"][-1]["metrics"]
    assert final["codec_errors"] == 1 and final["handled"] == {"value": 2}
    upstream.close()
    control.close(linger=0)
    context.term()
