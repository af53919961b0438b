"""The models file and `groundloop serve`. Without Ray: the shipped file listens on loopback only,
anything else is explicit and reported; a bad file is an error naming it and the field; a graph that
names a deployment validates with no model and no cluster; a replica whose model keeps failing
reports itself unhealthy (a caller's bad request does not count). With the command running as a user
runs it: it starts Ray and Serve on loopback, deploys, prints its models, tells clients its address,
answers them, and on Ctrl-C stops everything and removes the address file; a missing checkpoint or a
bad field stops it before Ray starts."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from nodes.serving.client import ServedClip, read_address_file
from nodes.serving.config import (LOOPBACK, DeploymentSpec, ServeConfigError, ServeRef, load_models_config,
                                  missing_checkpoint, parse_models_config)
from pipeline.cli import main
from pipeline.graph import GraphError, build_graph
from tests.nodes.clip.tiny import build_tiny_clip
from tests.nodes.serving.conftest import TEST_CPUS, free_port, listening_hosts, loopback_pinned

SHIPPED = "configs/models.yaml"
CLIP = {"name": "clip", "kind": "clip", "checkpoint": "models/clip_shapes"}
ROOT = Path(__file__).resolve().parents[3]
COMMAND = [sys.executable, "-m", "pipeline.cli", "serve"]
READY_LINE = "serving; Ctrl-C stops"
START_TIMEOUT_S, STOP_TIMEOUT_S = 240.0, 90.0
POLL_S = 0.5
MAPPED_LOOPBACK = f"::ffff:{LOOPBACK}"  # an IPv6 socket bound to 127.0.0.1
SERVE_REPLICA_PROCESS = "ray::ServeReplica:clip:clip"


def test_the_shipped_file_starts_clip_vlm_and_the_expert_on_loopback_only() -> None:
    config = load_models_config(SHIPPED)
    assert config.names() == ["clip", "vlm", "action_expert"]
    assert config.ray_host == config.http_host == LOOPBACK and config.exposed() == []
    assert all(missing_checkpoint(spec) is None for spec in config.deployments)  # the shipped models are there
    clip = config.deployment("clip")
    assert clip.deployment_options()["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_replicas_that_cannot_all_be_placed_are_refused_before_anything_waits_for_them() -> None:
    config = load_models_config(SHIPPED)
    assert config.over_reserved(cpus=2, gpus=0) is None  # the shipped file fits the 2-core machine
    problem = config.over_reserved(cpus=1.5, gpus=0)
    assert problem is not None and "2 CPUs reserved, 1.5 offered" in problem
    gpu = parse_models_config({"deployments": [{**CLIP, "ray_actor_options": {"num_gpus": 1}}]}, "m.yaml")
    assert "1 GPUs reserved, 0 offered" in gpu.over_reserved(cpus=2, gpus=0)


def test_listening_beyond_this_machine_is_explicit_and_reported() -> None:
    assert parse_models_config({"deployments": [CLIP]}, "m.yaml").exposed() == []
    config = parse_models_config({"http_host": "0.0.0.0", "ray_host": "localhost", "deployments": [CLIP]}, "m.yaml")
    assert config.exposed() == ["http_host: 0.0.0.0"]


@pytest.mark.parametrize(("data", "message"), [
    ({"deployments": [{**CLIP, "kind": "sam"}]}, r"m\.yaml: deployments\[0\] \(clip\)\.kind: Input should be"),
    ({"deployments": [{**CLIP, "name": "vlm", "kind": "vlm"}]}, r"deployments\[0\] \(vlm\): .*max_batch_size must be 1"),
    ({"deployments": [{**CLIP, "kind": "vlm", "max_batch_size": 1, "backend": "onnx"}]},
     "backend applies to kind clip only"),
    ({"deployments": [CLIP, CLIP]}, "clip appear more than once"),
    ({"deployments": [{**CLIP, "num_replicas": 0}]}, r"deployments\[0\] \(clip\)\.num_replicas"),
    ({"deployments": [{**CLIP, "replicas": 2}]}, r"deployments\[0\] \(clip\)\.replicas: Extra inputs"),
    ({"deployments": []}, "deployments: List should have at least 1 item"),
    ({"ray_host": "0.0.0.0", "deployments": [CLIP]}, "ray_host is the address Ray advertises"),
    (["clip"], "expected a mapping"),
])
def test_a_bad_file_names_itself_and_the_field(data: object, message: str) -> None:
    with pytest.raises(ServeConfigError, match=message):
        parse_models_config(data, "m.yaml")


def test_a_missing_file_or_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="nope.yaml: cannot read"):
        load_models_config(tmp_path / "nope.yaml")
    spec = DeploymentSpec(**{**CLIP, "checkpoint": str(tmp_path / "clip")})
    assert "groundloop train clip" in missing_checkpoint(spec) and str(tmp_path / "clip") in missing_checkpoint(spec)
    expert = DeploymentSpec(name="e", kind="action_expert", checkpoint="nope.pt")
    assert "groundloop train action-expert" in missing_checkpoint(expert)


def test_a_graph_naming_a_deployment_validates_without_ray_or_a_model() -> None:
    node = {"id": "prescan", "uses": "nodes.clip_prescan.ClipPrescan",
            "params": {"question": "q", "video": "v.mp4", "model": {"serve": "clip", "max_in_flight": 8}}}
    graph = build_graph({"name": "g", "nodes": [node]}, "g.yaml")
    assert graph.nodes["prescan"].params.model == ServeRef(serve="clip", max_in_flight=8)
    node["params"]["model"] = {"serve": "clip", "replicas": 2}
    with pytest.raises(GraphError, match="replicas"):
        build_graph({"name": "g", "nodes": [node]}, "g.yaml")


def test_no_cluster_or_a_stale_address_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nodes.serving.client import ServeUnavailableError, connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # no address file here
    with pytest.raises(ServeUnavailableError, match="groundloop serve configs/models.yaml"):
        connect()
    stale = f"{LOOPBACK}:{free_port()}"  # what a killed `groundloop serve` leaves in its address file
    with pytest.raises(ServeUnavailableError, match=f"nothing answers at the Ray address {stale}"):
        connect(stale)  # at once: ray.init would retry a dead address for minutes


def test_a_replica_whose_model_keeps_failing_reports_unhealthy() -> None:
    from nodes.serving.deployments import MAX_CONSECUTIVE_FAILURES, ModelReplica

    replica = ModelReplica(DeploymentSpec(**CLIP))

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def bad_request() -> None:
        raise ValueError("images[0]: expected an H×W×3 uint8 RGB array")

    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        with pytest.raises(RuntimeError):
            asyncio.run(replica.run_model(broken))
    for _ in range(5):  # the caller's fault: not the replica's
        with pytest.raises(ValueError):
            asyncio.run(replica.run_model(bad_request))
    replica.check_health()
    with pytest.raises(RuntimeError):
        asyncio.run(replica.run_model(broken))
    with pytest.raises(RuntimeError, match="3 model calls in a row failed; last: RuntimeError: CUDA error"):
        replica.check_health()
    assert asyncio.run(replica.run_model(lambda: 42)) == 42  # one success and it is healthy again
    replica.check_health()


class Served:
    """The running command: its models file, output so far, and process."""

    def __init__(self, config: dict, directory: Path) -> None:
        self.config = config
        self.file = directory / "models.yaml"
        self.file.write_text(yaml.safe_dump(config))
        self.log = directory / "serve.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(COMMAND + [str(self.file)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY_LINE not in self.output():
            assert self.process.poll() is None, f"groundloop serve exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"groundloop serve not ready in {START_TIMEOUT_S:g} s:\n{self.output()}"
            time.sleep(POLL_S)


def tiny_config(model: Path, directory: Path) -> dict:
    return {"num_cpus": TEST_CPUS, "http_port": free_port(), "address_file": str(directory / "address.json"),
            "deployments": [{"name": "clip", "kind": "clip", "checkpoint": str(model), "device": "cpu",
                             "num_threads": 1, "max_batch_size": 8}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The module's one Ray session: the command's own, joined by the tests through its address file."""
    directory = tmp_path_factory.mktemp("serve")
    running = Served(tiny_config(build_tiny_clip(directory / "clip"), directory), directory)
    try:
        running.wait_ready()
        with loopback_pinned():  # the tests join the cluster, as a node on this machine would
            yield running
    finally:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGINT)
            try:
                running.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                running.process.kill()


def listening_sockets(pid: int) -> set[tuple[str, str]]:
    """(address, process name) of every socket a process and its descendants (Ray's GCS, raylet,
    agents, Serve's actors) listen on."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            found |= {(c.laddr.ip, process.name()) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            continue
    return found


def test_serve_prints_its_models_binds_loopback_answers_and_stops_clean(served: Served) -> None:
    import ray

    output = served.output()
    assert "clip" in output and "RUNNING" in output and "1/1" in output
    assert "listening on loopback only" in output
    address_file = Path(served.config["address_file"])
    address = read_address_file(address_file)
    assert address is not None and address.startswith(f"{LOOPBACK}:")
    assert listening_hosts(served.config["http_port"]) == {LOOPBACK}  # Serve's HTTP proxy: loopback only
    assert listening_hosts(int(address.rpartition(":")[2])) == {LOOPBACK}  # and Ray's GCS
    # and every other Ray process, but for the one listener Ray Serve 2.60 hard-codes to every interface
    # (each replica's inter-deployment gRPC server, behind Ray's token authentication)
    exposed = {(ip, name) for ip, name in listening_sockets(served.process.pid) if ip not in (LOOPBACK, MAPPED_LOOPBACK)}
    assert {name for _, name in exposed} <= {SERVE_REPLICA_PROCESS}, exposed
    try:
        clip = ServedClip(ServeRef(serve="clip", address=address))
        rows = clip.embed_images(np.zeros((3, 64, 64, 3), np.uint8))
        assert rows.shape == (3, clip.dim)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    finally:
        ray.shutdown()  # leave the command's cluster before stopping it
    assert json.loads(address_file.read_text())["deployments"] == ["clip"]

    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(STOP_TIMEOUT_S) == 0, served.output()
    assert "stopping" in served.output()
    assert not address_file.exists()
    assert listening_hosts(served.config["http_port"]) == set()


def test_a_missing_checkpoint_or_a_bad_field_stops_it_before_ray_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    config = tiny_config(tmp_path / "no_clip", tmp_path)
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(config))
    assert main(["serve", str(tmp_path / "models.yaml")]) == 2
    error = capsys.readouterr().err
    assert f"no checkpoint at {tmp_path / 'no_clip'}" in error and "groundloop train clip" in error
    config["deployments"][0]["max_batch_size"] = 0
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(config))
    assert main(["serve", str(tmp_path / "models.yaml")]) == 2
    assert "deployments[0] (clip).max_batch_size" in capsys.readouterr().err
    assert not ray.is_initialized()
