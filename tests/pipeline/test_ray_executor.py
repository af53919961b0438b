"""The ray executor on one Ray session shared by the module (starting Ray costs seconds): toy graphs with
the edge policies, large arrays through the object store, restarts after a crash and a hang, placement
options, the CLI (and SIGTERM to it); then the video QA graph (the same result as on inproc) and the
embodied loop (its episodes, success reported) on Ray."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
import ray
import yaml

from pipeline.graph import GraphError, build_graph, load_graph
from pipeline.inproc import InprocExecutor
from pipeline.ray_cluster import LOOPBACK, actor_options
from pipeline.ray_executor import OBJECT_STORE_MIN_BYTES, RayExecutor
from tests.pipeline.test_zmq_executor import by_node, chain, read_sink, totals

pytestmark = pytest.mark.slow
OBJECT_STORE_BYTES = 300 * 1024 * 1024
SESSION_CPUS = 2


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray for the module, bound to loopback, in its own short temp dir (socket paths)."""
    temp_dir = tempfile.mkdtemp(prefix="glray-", dir="/tmp")
    ray.init(num_cpus=SESSION_CPUS, include_dashboard=False, _node_ip_address=LOOPBACK,
             object_store_memory=OBJECT_STORE_BYTES, _temp_dir=temp_dir, log_to_driver=True)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_ray(raw: dict) -> dict[str, dict]:
    return by_node(RayExecutor(build_graph(raw, "test.yaml")).run(max_seconds=80))


def test_same_outputs_as_inproc_and_large_arrays_go_through_the_object_store(tmp_path):
    results = {}
    for name in ("inproc", "ray"):
        out = tmp_path / f"{name}.jsonl"
        raw = chain(out, count=30, payload_bytes=2_000_000)
        if name == "inproc":
            InprocExecutor(build_graph(raw, "test.yaml")).run()
        else:
            metrics = run_ray(raw)
        results[name] = read_sink(out)
    assert results["inproc"] == results["ray"]
    values, blobs = results["ray"]
    assert values == [2 * i for i in range(30)]
    assert [b["blob_first"] for b in blobs] == [i % 251 for i in range(30)]
    # each 2 MB array was put in the object store once and fetched by its one consumer; small ticks went inline
    assert metrics["counter"]["object_store_puts"] == 30 and metrics["sink"]["object_store_gets"] == 30
    assert metrics["double"]["object_store_gets"] == 0 and metrics["double"]["object_store_puts"] == 0
    assert 2_000_000 >= OBJECT_STORE_MIN_BYTES > 1_000  # a Tick is far below the threshold
    assert {m["restarts"] for m in metrics.values()} == {0}


def test_the_end_of_a_stream_reaches_every_node_downstream_in_order(tmp_path):
    out = tmp_path / "sink.jsonl"
    run_ray(totals(out))
    assert read_sink(out)[0] == [sum(range(20))]


def test_latest_drops_under_a_slow_consumer(tmp_path):
    out = tmp_path / "sink.jsonl"
    metrics = run_ray(chain(out, count=150, period_s=0.002, sink={"delay_s": 0.03},
                            value_edge={"from": "double/scaled", "policy": "latest"}))
    values, _ = read_sink(out)
    assert len(values) < 150 and sum(metrics["sink"]["drops"].values()) > 0
    assert values == sorted(values) and values[-1] == 2 * 149  # ever newer, ending with the newest


def test_queue_loses_nothing_under_a_slow_consumer_and_bounds_its_depth(tmp_path):
    out = tmp_path / "sink.jsonl"
    metrics = run_ray(chain(out, count=60, sink={"delay_s": 0.01}, value_edge={"from": "double/scaled", "policy": "queue", "size": 4}))
    values, _ = read_sink(out)
    assert values == [2 * i for i in range(60)]
    assert metrics["sink"]["max_queue_depth"]["value"] <= 4
    assert metrics["double"]["emitted"]["scaled"] == 60 and sum(metrics["sink"]["drops"].values()) == 0


def test_a_crash_inside_a_handler_is_restarted_and_nothing_is_lost_or_doubled(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=40, payload_bytes=100_000, scale={"crash_at": 10, "marker": str(tmp_path / "crashed")})
    metrics = run_ray(raw)
    values, blobs = read_sink(out)
    assert values == [2 * i for i in range(40)] and len(blobs) == 40
    assert metrics["double"]["restarts"] == 1 and metrics["counter"]["restarts"] == 0


def test_a_slow_setup_is_not_taken_for_a_hang_but_a_hung_handler_is_restarted(tmp_path):
    out = tmp_path / "sink.jsonl"
    raw = chain(out, count=20, scale={"setup_s": 3.0, "hang_at": 5, "marker": str(tmp_path / "hung")})
    raw["nodes"][1]["hang_timeout_s"] = 1.0  # applies once running: setup may take as long as it needs
    metrics = run_ray(raw)
    assert read_sink(out)[0] == [2 * i for i in range(20)]
    assert metrics["double"]["restarts"] == 1  # killed once, for the hang, never for the slow setup


def test_a_node_failing_in_setup_stops_the_graph_with_its_error(tmp_path):
    from pipeline.zmq_executor import GraphFailed

    raw = chain(tmp_path / "sink.jsonl", count=5, sink={"out": str(tmp_path / "missing-dir" / "sink.jsonl")})
    with pytest.raises(GraphFailed, match="node sink failed in setup.*FileNotFoundError.*missing-dir"):
        RayExecutor(build_graph(raw, "test.yaml")).run(max_seconds=60)


def test_resources_become_actor_options_and_an_unknown_placement_is_named(tmp_path):
    raw = chain(tmp_path / "sink.jsonl", count=3)
    raw["nodes"][1]["resources"] = {"num_cpus": 0.5, "num_gpus": 0, "node": "gpu_box"}
    graph = build_graph(raw, "test.yaml")
    options = actor_options(graph.nodes["double"], edges=2)
    assert (options["num_cpus"], options["num_gpus"], options["max_restarts"]) == (0.5, 0, 5)
    assert set(options["resources"]) == {"gpu_box"} and 0 < options["resources"]["gpu_box"] < 0.01
    assert actor_options(graph.nodes["sink"], edges=2)["num_cpus"] == 0  # holds no CPU unless it asks
    with pytest.raises(GraphError, match="node 'double': resources.node: no Ray node offers 'gpu_box'"):
        RayExecutor(graph).run(max_seconds=30)
    raw["nodes"][1]["resources"] = {"num_cpu": 1}
    with pytest.raises(GraphError, match="resources.num_cpu: unknown key"):
        build_graph(raw, "test.yaml")


def test_the_cli_runs_a_graph_on_ray(tmp_path, capsys):
    from pipeline import cli

    graph_file = tmp_path / "chain.yaml"
    graph_file.write_text(yaml.safe_dump(chain(tmp_path / "sink.jsonl", count=10)))
    assert cli.main(["run", str(graph_file), "--executor", "ray", "--max-seconds", "60"]) == 0
    assert "finished on ray" in capsys.readouterr().out
    assert read_sink(tmp_path / "sink.jsonl")[0] == [2 * i for i in range(10)]


def test_sigterm_stops_a_cli_run_and_the_ray_it_started(tmp_path):
    """Without --ray-address the CLI starts its own Ray on loopback; SIGTERM ends the run and that Ray."""
    graph_file, out = tmp_path / "long.yaml", tmp_path / "sink.jsonl"
    graph_file.write_text(yaml.safe_dump(chain(out, count=100000, period_s=0.01, payload_bytes=500_000)))
    ray_tmp = tempfile.mkdtemp(prefix="glray-", dir="/tmp")  # its own, short (socket paths), not /tmp/ray
    cli = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(graph_file), "--executor", "ray"],
                           env={**os.environ, "PYTHONPATH": os.getcwd(), "RAY_TMPDIR": ray_tmp})
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.exists() and out.stat().st_size, "the graph did not start within a minute"
        children = psutil.Process(cli.pid).children(recursive=True)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:  # a failed assertion must not leave a graph running
            cli.kill()
            cli.wait()
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    shutil.rmtree(ray_tmp, ignore_errors=True)


AIR_GRAPH, PICK_GRAPH = "configs/video_qa_air.yaml", "configs/pick_cube.yaml"
QUESTION, OPTIONS = "Which shape appeared first?", "[red circle, blue square, green star, cyan cross]"
#: the shipped CLIP and VLM on a 4 s clip, A.I.R. cut to 4 frames in one iteration: a run of seconds
SMALL_AIR = ["prescan.fps=5", "prescan.num_threads=1", "air.budget=4", "air.air={candidates: 4, i_max: 1}"]


def test_the_video_qa_graph_gives_the_same_answer_on_ray_as_on_inproc(tmp_path):
    from pipeline.cli import graph_wide_sets
    from tests.nodes.clip.tiny import write_shapes_clip

    video = write_shapes_clip(tmp_path / "tiny.mp4")[0]
    results = {}
    for name, executor in (("inproc", InprocExecutor), ("ray", RayExecutor)):
        sets = [f"video={video}", f"question={QUESTION}", f"options={OPTIONS}", f"report.out_json={tmp_path / name}.json",
                f"report.contact_sheet={tmp_path / name}.png", f"prescan.cache_dir={tmp_path / name}-cache", *SMALL_AIR]
        executor(load_graph(AIR_GRAPH, graph_wide_sets(AIR_GRAPH, sets))).run(max_seconds=80)
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for result in results.values():
        result.pop("contact_sheet")
    assert results["ray"] == results["inproc"]
    assert results["ray"]["answer"] in OPTIONS and 1 <= len(results["ray"]["frames"]) <= 4


def test_the_embodied_loop_runs_its_episodes_on_ray(tmp_path):
    from nodes.evaluate import summarize

    results_path = tmp_path / "episodes.jsonl"
    graph = load_graph(PICK_GRAPH, ["expert.num_threads=1", "env.episodes=2", "env.seed=1000", f"env.results_path={results_path}"])
    metrics = RayExecutor(graph).run(max_seconds=85)
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    summary = summarize(results, metrics, 0.0, graph.name, "ray", 2, 1000)
    print(f"pick_cube on ray: success {summary['successes']}/{summary['episodes']}, mean length {summary['mean_episode_length']:.1f}")
    assert summary["episodes"] == 2 and summary["successes"] >= 1
    counters = summary["counters"]
    assert counters["env"]["actions_executed"] + counters["env"].get("holds_executed", 0) == sum(r["steps"] for r in results)
    assert not any(key.startswith("hold_rejected") for key in counters.get("controller", {}))
