"""Where a graph's nodes run on a Ray cluster, and a cluster of several Ray nodes on one machine.

Placement: a node's `resources` become its actor's options, checked against what the cluster offers.

A local cluster: a head (`ray start --head`) and workers (`ray start --address`), each offering a custom
resource that names it, so a graph can pin its nodes to different Ray nodes before there are different
machines (the tests and CI).

Everything lives in its own short temp dir, with the dashboard off and token authentication on (Ray's
token in ~/.ray/auth_token, made if missing). Ray turns 127.0.0.1 into this machine's own address and
some of its processes listen on every interface: never run a test cluster on a machine reachable from
untrusted networks. Teardown ends exactly the processes this cluster started, found by its temp dir,
never with `ray stop` (which stops every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from pipeline.graph import Graph, GraphError, NodeSpec

LOOPBACK = "127.0.0.1"
#: with it off, Ray keeps 127.0.0.1 as the node address instead of swapping in the host's outward one
LOOPBACK_ENV, LOOPBACK_ENV_VALUE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"
AUTH_ENV = {"RAY_AUTH_MODE": "token"}  # a driver joining by address needs this too (see `driver_env`)
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
DEFAULT_NODES = ("node_a", "node_b")
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 5.0
DEFAULT_OBJECT_STORE_MB = 200
BYTES_PER_MB = 1024 * 1024
NODE_RESOURCE_SHARE = 0.001  # of a Ray node's placement resource per actor: any number of actors fit
CONTROL_THREADS = 4  # an actor's threads beside one per edge: run, metrics, stop, end
#: CPUs a node holds unless it asks: none, like Ray's plain actors (one naming any resource holds 1 by
#: default, so two nodes pinned to a 1-CPU Ray node could not both start)
DEFAULT_NUM_CPUS = 0.0


def actor_options(spec: NodeSpec, edges: int) -> dict[str, Any]:
    """Ray actor options of a node: its resources and placement, restarts, a thread per edge."""
    resources = spec.resources
    options: dict[str, Any] = {"max_restarts": spec.restart.max_restarts, "max_concurrency": edges + CONTROL_THREADS,
                               "num_cpus": DEFAULT_NUM_CPUS if resources.num_cpus is None else resources.num_cpus}
    if resources.num_gpus is not None:
        options["num_gpus"] = resources.num_gpus
    if resources.node:
        options["resources"] = {resources.node: NODE_RESOURCE_SHARE}
    return options


def check_placement(graph: Graph, offered: dict[str, float]) -> None:
    """A node pinned to a resource that no Ray node offers would wait forever: say so before it starts."""
    for node_id, spec in graph.nodes.items():
        if spec.resources.node and spec.resources.node not in offered:
            raise GraphError(graph.file, node_id, "resources.node",
                             f"no Ray node offers {spec.resources.node!r} (resources: {', '.join(sorted(offered))})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _ray_command() -> list[str]:
    """The `ray` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("ray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def pin_loopback() -> None:
    """Make this process and the Ray processes it starts take 127.0.0.1 as the node's address, so
    that they bind loopback only (checked: GCS, raylet, workers and agents then listen on 127.0.0.1).

    Ray reads the variable once, when it is imported; a process that has imported Ray already (a test
    session) gets the same setting on the module Ray consults."""
    os.environ[LOOPBACK_ENV] = LOOPBACK_ENV_VALUE
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


@dataclass
class LocalCluster:
    """A head and workers on this machine; `address` is what drivers join (`ray.init(address=...)`)."""

    temp_dir: Path
    port: int
    nodes: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those whose command line names its temp dir, and their children."""
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in process.info["cmdline"] or []):
                found[process.pid] = process
                try:
                    found.update({child.pid: child for child in process.children(recursive=True)})
                except psutil.Error:
                    pass
        return list(found.values())

    def stop(self) -> None:
        """End this cluster's processes (SIGTERM, then SIGKILL after a grace period) and remove its files."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(processes, timeout=STOP_GRACE_S)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=STOP_GRACE_S)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def driver_env() -> dict[str, str]:
    """What a driver process needs in its environment to join a cluster started here."""
    return dict(AUTH_ENV)


def _ensure_token(env: dict[str, str]) -> None:
    if not TOKEN_FILE.exists():  # what a local ray.init() would make: a random token, readable by us only
        subprocess.run([*_ray_command(), "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=START_TIMEOUT_S)


def start_local_cluster(nodes: tuple[str, ...] = DEFAULT_NODES, cpus_per_node: int = 1,
                        object_store_mb: int = DEFAULT_OBJECT_STORE_MB) -> LocalCluster:
    """A head offering resource `nodes[0]` and one worker per further name, all on this machine."""
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="glray-", dir="/tmp")), _free_port(), nodes)  # short: socket paths
    env = {**os.environ, **AUTH_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        _ensure_token(env)
        common = ["--node-ip-address", LOOPBACK, "--num-cpus", str(cpus_per_node), "--temp-dir", str(cluster.temp_dir),
                  "--object-store-memory", str(object_store_mb * BYTES_PER_MB), "--disable-usage-stats"]
        for index, name in enumerate(nodes):
            role = ["--head", "--port", str(cluster.port), "--include-dashboard", "false"] if index == 0 else ["--address", cluster.address]
            subprocess.run([*_ray_command(), "start", *role, *common, "--resources", json.dumps({name: 1})],
                           env=env, check=True, timeout=START_TIMEOUT_S, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        detail = exc.stderr.decode(errors="replace")[-2000:] if isinstance(exc.stderr, bytes) else ""
        raise RuntimeError(f"could not start a local Ray cluster: {exc}\n{detail}") from None
    return cluster
