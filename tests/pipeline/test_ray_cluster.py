"""A real two-node Ray cluster on this machine (a head and a worker, started and stopped here): a graph
whose nodes are pinned to different Ray nodes runs through `groundloop run --executor ray --ray-address`,
each node on the Ray node it asked for, and its large arrays cross between them intact."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline.ray_cluster import driver_env, start_local_cluster
from tests.pipeline.test_zmq_executor import chain, read_sink

pytestmark = pytest.mark.slow
PLACEMENT = {"counter": "node_a", "double": "node_b", "sink": "node_b"}
CLI_TIMEOUT_S = 80


@pytest.fixture(scope="module")
def cluster():
    with start_local_cluster(("node_a", "node_b")) as local:
        yield local
    assert local.processes() == []  # nothing of it outlives the module


def ray_node_ids(address: str) -> dict[str, str]:
    """Custom resource -> the id of the Ray node offering it, asked from a short-lived driver."""
    script = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
              "print(json.dumps({r: n['NodeID'] for n in ray.nodes() if n['Alive'] for r in n['Resources'] if r.startswith('node_')}))")
    done = subprocess.run([sys.executable, "-c", script % address], env={**os.environ, **driver_env()},
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nodes_pinned_to_two_ray_nodes_run_there_and_arrays_cross_intact(cluster, tmp_path):
    ids = ray_node_ids(cluster.address)
    assert set(ids) == {"node_a", "node_b"} and ids["node_a"] != ids["node_b"]
    raw = chain(tmp_path / "sink.jsonl", count=20, payload_bytes=1_000_000)
    for node in raw["nodes"]:
        node["resources"] = {"node": PLACEMENT[node["id"]]}
    graph_file, metrics_file = tmp_path / "pinned.yaml", tmp_path / "metrics.json"
    graph_file.write_text(yaml.safe_dump(raw))
    env = {**os.environ, **driver_env(), "PYTHONPATH": os.getcwd()}
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(graph_file), "--executor", "ray",
                    "--ray-address", cluster.address, "--metrics-json", str(metrics_file), "--max-seconds", "60"],
                   env=env, check=True, timeout=CLI_TIMEOUT_S)
    metrics = {m["node"]: m for m in json.loads(metrics_file.read_text())}
    assert {node: m["ray_node_id"] for node, m in metrics.items()} == {node: ids[r] for node, r in PLACEMENT.items()}
    values, blobs = read_sink(tmp_path / "sink.jsonl")
    assert values == [2 * i for i in range(20)]
    assert [b["blob_first"] for b in blobs] == list(range(20)) and {b["blob_size"] for b in blobs} == {1_000_000}
    assert metrics["counter"]["object_store_puts"] == 20 and metrics["sink"]["object_store_gets"] == 20  # node_a -> node_b
