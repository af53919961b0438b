"""The zmq executor: a process per node, supervised.

The supervisor writes a run plan (graph, endpoints, shared-memory prefix), starts one worker process
per node, and watches them: a crashed worker is restarted with exponential backoff and resumes from
its delivery progress; a node still in setup() is never taken for hung (its heartbeats say
"starting"); a running node whose loop stops turning for `hang_timeout_s` is killed and restarted.
SIGINT/SIGTERM stop every worker, and whatever happens the run's shared-memory segments and its
run directory are removed. A graph with a `record` spec is recorded by a sink thread here, fed by its
workers (pipeline.record).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from pipeline.graph import Graph
from pipeline.metrics import NodeMetrics
from pipeline.record import RecordSink
from pipeline.zmq_worker import EXIT_SETUP_FAILED, PHASE_RUNNING, PHASE_STARTING
from streaming.shm import unlink_prefix

log = logging.getLogger("groundloop.supervisor")

SHUTDOWN_GRACE_S = 5.0
HEARTBEAT_SILENCE_S = 10.0  # workers report every 0.5 s, from a thread, even inside a long setup()
#: ... unless setup() sits in C code that holds the GIL (ManiSkill building its scene on a loaded
#: machine), which starves that thread: a starting node gets this long before it counts as wedged
STARTUP_SILENCE_S = 120.0
PROTOCOL_IPC, PROTOCOL_TCP = "ipc", "tcp"


class GraphFailed(RuntimeError):
    """A node crashed more often than its restart policy allows."""


@dataclass
class _Child:
    node_id: str
    process: subprocess.Popen | None = None
    incarnation: int = 0
    restarts: int = 0
    restart_at: float | None = None
    phase: str = PHASE_STARTING
    started_at: float = 0.0
    last_report: float = 0.0
    loop_age_s: float = 0.0
    finished: bool = False
    error: str = ""
    metrics: dict = field(default_factory=dict)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ZmqExecutor:
    def __init__(self, graph: Graph, machine: str | None = None, protocol: str | None = None):
        self.graph = graph
        self.machine = machine
        transport = graph.transport
        self.protocol = protocol or (PROTOCOL_TCP if transport.machines or transport.curve else transport.protocol)
        self.run_id = uuid.uuid4().hex[:10]
        self.shm_prefix = f"gl-{self.run_id}"
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"groundloop-{self.run_id}-"))
        local = [n for n, s in graph.nodes.items() if machine is None or s.machine == machine]
        self.children = {n: _Child(n) for n in local}
        self._stop = False
        self.record_endpoint = f"ipc://{self.run_dir}/record.sock"
        self._record_sink: RecordSink | None = None

    # ---- plan ---------------------------------------------------------------------------------

    def _endpoints(self) -> dict[str, dict[str, str]]:
        transport = self.graph.transport
        endpoints = {}
        for index, (node_id, spec) in enumerate(self.graph.nodes.items()):
            if self.protocol == PROTOCOL_IPC:
                address = f"ipc://{self.run_dir}/{node_id}.sock"
                endpoints[node_id] = {"bind": address, "connect": address}
                continue
            host = transport.machines.get(spec.machine, transport.bind) if spec.machine else transport.bind
            port = transport.base_port + index if transport.base_port else _free_port(transport.bind)
            endpoints[node_id] = {"bind": f"tcp://{transport.bind}:{port}", "connect": f"tcp://{host}:{port}"}
        return endpoints

    def _write_plan(self) -> Path:
        plan = {
            "graph": self.graph.raw,
            "file": self.graph.file,
            "run_dir": str(self.run_dir),
            "shm_prefix": self.shm_prefix,
            "use_shm": self.protocol == PROTOCOL_IPC,
            "endpoints": self._endpoints(),
            "control": f"ipc://{self.run_dir}/control.sock",
            "keys_dir": self.graph.transport.keys_dir if self.graph.transport.curve else None,
            "record": {"endpoint": self.record_endpoint, "streams": self.graph.record.streams} if self.graph.record else None,
        }
        path = self.run_dir / "plan.json"
        path.write_text(json.dumps(plan))
        return path

    # ---- children -----------------------------------------------------------------------------

    def _start(self, child: _Child, plan: Path) -> None:
        child.incarnation += 1
        finished = [c.node_id for c in self.children.values() if c.finished]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        command = [sys.executable, "-m", "pipeline.zmq_worker", "--plan", str(plan), "--node", child.node_id,
                   "--incarnation", f"{self.run_id}.{child.incarnation}", "--finished", ",".join(finished)]
        child.process = subprocess.Popen(command, env=env, start_new_session=True)
        child.phase, child.started_at, child.last_report, child.restart_at = PHASE_STARTING, time.monotonic(), time.monotonic(), None
        child.loop_age_s = 0.0

    def _on_report(self, report: dict) -> None:
        child = self.children.get(report.get("node", ""))
        if child is None or report.get("incarnation") != f"{self.run_id}.{child.incarnation}":
            return  # a previous life's last words
        child.phase = report.get("phase", child.phase)
        child.last_report = time.monotonic()
        child.loop_age_s = report.get("loop_age_s", 0.0)
        if "metrics" in report:
            child.metrics = report["metrics"]
        if "error" in report:
            child.error = report["error"]

    def _check(self, child: _Child, plan: Path) -> None:
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._start(child, plan)
            return
        if child.finished or child.process is None:
            return
        code = child.process.poll()
        if code == 0:
            child.finished = True
            return
        spec = self.graph.nodes[child.node_id]
        if code is None:
            hung = (spec.hang_timeout_s is not None and child.phase == PHASE_RUNNING and child.loop_age_s > spec.hang_timeout_s)
            slow = (spec.startup_timeout_s is not None and child.phase == PHASE_STARTING and now - child.started_at > spec.startup_timeout_s)
            silence_limit = HEARTBEAT_SILENCE_S if child.phase == PHASE_RUNNING else STARTUP_SILENCE_S
            silent = now - child.last_report > silence_limit  # not even its heartbeat thread speaks: wedged
            if hung or slow or silent:
                log.error("node %s: %s; killing it", child.node_id, "hung" if hung else "setup too slow" if slow else "no heartbeat")
                os.killpg(child.process.pid, signal.SIGKILL)
            return
        if code == EXIT_SETUP_FAILED:
            raise GraphFailed(f"node {child.node_id} failed in setup(): {child.error or 'see its log above'}")
        child.restarts += 1
        policy = spec.restart
        if child.restarts > policy.max_restarts:
            raise GraphFailed(f"node {child.node_id} exited with code {code} after {policy.max_restarts} restarts")
        delay = min(policy.backoff_s * 2 ** (child.restarts - 1), policy.max_backoff_s)
        log.warning("node %s exited with code %s; restart %d in %.1fs", child.node_id, code, child.restarts, delay)
        child.restart_at = now + delay

    # ---- run ----------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self, max_seconds: float | None = None, on_metrics: Callable[[list[dict]], None] | None = None,
            metrics_every_s: float | None = None) -> list[dict]:
        """Run until every node has finished; per-node metrics (restarts included)."""
        plan = self._write_plan()
        context = zmq.Context()
        control = context.socket(zmq.PULL)
        control.bind(f"ipc://{self.run_dir}/control.sock")
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        started = time.monotonic()
        next_report = started + metrics_every_s if metrics_every_s else None
        try:
            if self.graph.record is not None:
                self._record_sink = RecordSink(self.graph.record, self.graph, self.record_endpoint)
                self._record_sink.start()
            for child in self.children.values():
                self._start(child, plan)
            while not self._stop and not all(c.finished for c in self.children.values()):
                if control.poll(100):
                    while True:
                        try:
                            self._on_report(msgpack.unpackb(control.recv(zmq.NOBLOCK), raw=False))
                        except zmq.Again:
                            break
                for child in self.children.values():
                    self._check(child, plan)
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    log.warning("graph %s: stopping after max_seconds=%s", self.graph.name, max_seconds)
                    break
                if next_report is not None and time.monotonic() >= next_report and on_metrics is not None:
                    on_metrics(self.metrics())
                    next_report += metrics_every_s
        finally:
            self._shutdown(control)
            control.close(linger=0)
            context.term()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.metrics()

    def _shutdown(self, control: zmq.Socket) -> None:
        running = [c for c in self.children.values() if c.process is not None and c.process.poll() is None]
        for child in running:
            os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        while control.poll(50):  # final metrics of workers that just stopped
            self._on_report(msgpack.unpackb(control.recv(), raw=False))
        if self._record_sink is not None:  # every worker has exited: what they recorded is with the sink
            self._record_sink.close()
            self._record_sink = None
        unlink_prefix(self.shm_prefix)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def metrics(self) -> list[dict]:
        out = []
        for child in self.children.values():
            snapshot = dict(child.metrics) or NodeMetrics(child.node_id).snapshot()
            snapshot["restarts"] = child.restarts
            out.append(snapshot)
        return out


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
