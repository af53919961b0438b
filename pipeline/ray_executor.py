"""The ray executor: a Ray actor per node, placed across a Ray cluster by each node's `resources`.

An actor has a mailbox per input, filled by its producers' `deliver` calls (on the actor's other
threads) and emptied by the node's loop, which also ticks a source. `latest`: the mailbox keeps only
the newest and the producer does not wait. `queue` (size S): it holds at most S and `deliver` returns
once there is room (backpressure), with the consumer's progress; the producer keeps what is not yet
handled. A message with 64 KB of arrays or more is `ray.put` once and only its ObjectRef goes to each
consumer, which fetches it when it handles it (zero-copy on its host; a dropped `latest` message is
never fetched). A node ends once its producers have and its mailbox is empty.

Restart: a dead actor (a crash, a kill for a hang) is restarted by Ray up to `restart.max_restarts`
times, then resumes from the newest progress its producers were told while they resend the rest: a
deterministic node re-emits the same outputs under the same seqs, which its consumers drop, so nothing
is lost or doubled on `queue` edges. A failed setup() stops the graph.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from pipeline.graph import POLICY_LATEST, Edge, Graph, GraphError, NodeSpec
from pipeline.messages import Message
from pipeline.metrics import NodeMetrics
from pipeline.ray_cluster import LOOPBACK, actor_options, check_placement, pin_loopback
from pipeline.runtime import NodeRunner
from pipeline.zmq_executor import GraphFailed

log = logging.getLogger("groundloop.ray")

LOG_LEVEL_ENV = "GROUNDLOOP_LOG"
LOCAL_RAY = {"include_dashboard": False, "_node_ip_address": LOOPBACK}  # a Ray of our own, when none is given
OBJECT_STORE_MIN_BYTES = 64 * 1024  # arrays at least this large go through the object store
POLL_S = 0.1
IDLE_TICK_S = 0.01  # an idle source (tick returned None) is ticked again after this
METRICS_PERIOD_S = 1.0
LATEST_IN_FLIGHT = 32  # latest deliveries a producer tracks before pruning the finished ones
FLUSH_TIMEOUT_S = 10.0  # a finishing node's last deliveries and ends reach its consumers within this
SHUTDOWN_GRACE_S = 5.0
STATUS_DONE, STATUS_STOPPED, STATUS_SETUP_FAILED = "done", "stopped", "setup failed"
PHASE_STARTING, PHASE_RUNNING, PHASE_DONE = "starting", "running", "done"


class Progress(NamedTuple):
    """A consumer's state after it handled its `handled`-th message: where a restart resumes."""

    handled: int
    processed: dict[str, int]  # input port -> newest seq handled
    out_seq: dict[str, int]  # output port -> next seq


@dataclass
class _Delivery:
    port: str
    seq: int
    arrival: int
    item: Any  # the message itself, or [ObjectRef] of it


def array_bytes(message: Message) -> int:
    return sum(value.nbytes for value in vars(message).values() if isinstance(value, np.ndarray))


class Mailbox:
    """One actor's inputs, each with its edge's policy; `put` is called on Ray's threads, `take` by the loop."""

    def __init__(self, edges: list[Edge], processed: dict[str, int], metrics: NodeMetrics):
        self.edges = {e.target_port: e for e in edges}
        self.items: dict[str, deque[_Delivery]] = {port: deque() for port in self.edges}
        self.processed = processed  # the runner's own: a seq it handled is a duplicate
        self.metrics = metrics
        self.producers = {e.source for e in edges}
        self.ended: set[str] = set()
        self.closed = False
        self.cond = threading.Condition()
        self._arrivals = itertools.count()

    def put(self, port: str, seq: int, item: Any, force: bool = False) -> bool:
        """Queue a delivery; on a full `queue` input wait for room unless `force` (a resend). False once
        closed: the node takes nothing more."""
        edge = self.edges[port]
        with self.cond:
            queue = self.items[port]
            while edge.policy != POLICY_LATEST and not force and len(queue) >= edge.size and not self.closed:
                self.cond.wait()
            if self.closed:
                self.metrics.drops[port] += 1
                return False
            if seq <= self.processed[port] or any(d.seq == seq for d in queue):
                self.metrics.duplicates[port] += 1
                return True
            if edge.policy == POLICY_LATEST and queue:  # keep the newer of the two (threads may reorder)
                self.metrics.drops[port] += 1
                if queue[-1].seq > seq:
                    return True
                queue.clear()
            bisect.insort(queue, _Delivery(port, seq, next(self._arrivals), item), key=lambda d: d.seq)
            self.metrics.set_depth(port, len(queue))
            self.cond.notify_all()
            return True

    def take(self, timeout_s: float) -> _Delivery | None:
        """The oldest delivery of any input, waiting up to `timeout_s` for one."""
        with self.cond:
            if timeout_s > 0 and not any(self.items.values()) and not self.closed:
                self.cond.wait(timeout_s)
            heads = [queue[0] for queue in self.items.values() if queue]
            if not heads:
                return None
            first = min(heads, key=lambda d: d.arrival)
            self.items[first.port].popleft()
            self.metrics.set_depth(first.port, len(self.items[first.port]))
            self.cond.notify_all()
            return first

    def end(self, producer: str) -> None:
        with self.cond:
            self.ended.add(producer)

    def drained(self) -> bool:
        with self.cond:
            return self.ended >= self.producers and not any(self.items.values())

    def close(self) -> None:
        """Take nothing more: producers waiting for room go on, and what they send is dropped."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


@ray.remote
class NodeActor:
    """One node: `run` is its loop; `deliver`, `end`, `ack_for`, `resend`, `metrics`, `stop` come on other threads."""

    def __init__(self, spec: NodeSpec, in_edges: list[Edge], out_edges: list[Edge]):
        logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format=f"%(asctime)s {spec.id} %(levelname)s %(name)s: %(message)s")
        self.spec, self.in_edges, self.out_edges = spec, in_edges, out_edges
        self.runner = NodeRunner(spec, in_edges, self._send)
        self.mailbox = Mailbox(in_edges, self.runner.processed_seq, self.runner.metrics)
        self.by_port = {port: [e for e in out_edges if e.source_port == port] for port in spec.cls.outputs}
        self.handled = self.puts = self.gets = 0
        self.progress = self._progress()
        self.retained: dict[str, deque[tuple[int, Any]]] = {e.id: deque() for e in out_edges if e.policy != POLICY_LATEST}
        self.acks: dict[str, Progress] = {}  # consumer -> the newest progress it reported
        self.lock = threading.Lock()  # retained and acks
        self.latest_refs: list[ray.ObjectRef] = []
        self.peers: dict[str, Any] = {}
        self.stop_requested = False
        self.phase, self.loop_at = PHASE_STARTING, time.monotonic()
        self.ray_node_id = ray.get_runtime_context().get_node_id()
        self.snapshot = self._snapshot()

    def deliver(self, port: str, seq: int, item: Any, force: bool = False) -> Progress | None:
        """Take a message; this node's progress, or None once it takes nothing more."""
        return self.progress if self.mailbox.put(port, seq, item, force) else None

    def end(self, producer: str) -> None:
        self.mailbox.end(producer)

    def ack_for(self, consumer: str) -> Progress | None:
        with self.lock:
            return self.acks.get(consumer)

    def resend(self, consumer: str, handle: Any, processed: dict[str, int]) -> int:
        """Deliver again, in order, what `consumer` (restarted) has not handled; how many."""
        with self.lock:
            held = [(e.target_port, list(self.retained[e.id])) for e in self.out_edges if e.target == consumer and e.id in self.retained]
        refs = [handle.deliver.remote(port, seq, item, True) for port, items in held for seq, item in items if seq > processed.get(port, -1)]
        return len(ray.get(refs, timeout=FLUSH_TIMEOUT_S))

    def metrics(self) -> dict[str, Any]:
        return {**self.snapshot, "phase": self.phase, "loop_age_s": time.monotonic() - self.loop_at}

    def stop(self) -> None:
        self.stop_requested = True
        self.mailbox.close()

    def run(self, peers: dict[str, Any], incarnation: int, finished: list[str]) -> dict[str, Any]:
        """Set up and run the node until it ends (or is stopped); its status and final metrics."""
        self.peers = peers
        for producer in finished:
            self.mailbox.end(producer)
        if incarnation > 1:
            self._resume()
        try:
            self.runner.setup()
        except Exception as exc:  # a missing model, a bad device: restarting will not help
            log.exception("node %s: setup() failed", self.spec.id)
            self.runner.close()
            return {"status": STATUS_SETUP_FAILED, "error": f"{type(exc).__name__}: {exc}", "metrics": self._snapshot()}
        self.phase, self.loop_at = PHASE_RUNNING, time.monotonic()
        try:
            self._loop()
            if not self.stop_requested and not self.spec.cls.is_source():
                self.runner.end_inputs()  # every input has ended: the node's last emissions go before its end
        finally:
            self.mailbox.close()
            self.runner.close()
        if not self.stop_requested:
            self._finish()
        self.phase = PHASE_DONE
        self.snapshot = self._snapshot()
        return {"status": STATUS_STOPPED if self.stop_requested else STATUS_DONE, "metrics": self.snapshot}

    def _loop(self) -> None:
        is_source = self.spec.cls.is_source()
        period = 1.0 / self.spec.rate_hz if self.spec.rate_hz else 0.0
        next_tick = next_snapshot = time.monotonic()
        while not self.stop_requested:
            now = self.loop_at = time.monotonic()
            if is_source and not self.runner.finished and now >= next_tick:
                produced = self.runner.tick()
                self.progress = self._progress()
                next_tick = max(next_tick + period, now - 1.0) if period else now + (IDLE_TICK_S if produced is None else 0.0)
            if now >= next_snapshot:
                self.snapshot, next_snapshot = self._snapshot(), now + METRICS_PERIOD_S
            if (self.runner.finished if is_source else self.mailbox.drained()):
                return
            waits = [POLL_S] + ([next_tick - now] if is_source else [])
            if (timeout := self.runner.next_timeout()) is not None:
                waits.append(timeout)
            delivery = self.mailbox.take(max(0.0, min(waits)))
            if delivery is not None:
                self._handle(delivery)
            self.runner.check_timeouts()

    def _handle(self, delivery: _Delivery) -> None:
        item, port = delivery.item, delivery.port
        if isinstance(item, list):
            try:
                item = ray.get(item[0])
                self.gets += 1
            except RayError as exc:  # its owner died with it
                self.runner.metrics.codec_errors += 1
                log.error("node %s: lost seq %d on input %r: %s", self.spec.id, delivery.seq, port, exc)
                self.runner.processed_seq[port] = max(self.runner.processed_seq[port], delivery.seq)
                return
        if self.runner.offer(port, item.frozen_view()):
            self.runner.step()
            self.handled += 1
            self.progress = self._progress()
        self.runner.metrics.set_depth(port, len(self.mailbox.items[port]))

    def _progress(self) -> Progress:
        return Progress(self.handled, dict(self.runner.processed_seq), dict(self.runner.out_seq))

    def _snapshot(self) -> dict[str, Any]:
        snapshot = self.runner.metrics.snapshot()
        snapshot.update(object_store_puts=self.puts, object_store_gets=self.gets, ray_node_id=self.ray_node_id)
        return snapshot

    def _send(self, port: str, message: Message) -> None:
        edges = self.by_port[port]
        if not edges:
            return
        item: Any = message
        if array_bytes(message) >= OBJECT_STORE_MIN_BYTES:
            item = [ray.put(message)]  # once, for every consumer; the list keeps Ray from resolving it early
            self.puts += 1
        waits = []
        for edge in edges:
            ref = self.peers[edge.target].deliver.remote(edge.target_port, message.seq, item)
            if edge.policy == POLICY_LATEST:
                self.latest_refs.append(ref)
                continue
            with self.lock:
                self.retained[edge.id].append((message.seq, item))
            waits.append((edge, ref))
        if len(self.latest_refs) > LATEST_IN_FLIGHT:
            self.latest_refs = ray.wait(self.latest_refs, num_returns=len(self.latest_refs), timeout=0)[1]
        for edge, ref in waits:
            self._await(edge, ref)

    def _await(self, edge: Edge, ref: ray.ObjectRef) -> None:
        """Wait until a `queue` delivery has room (backpressure), alive and stoppable meanwhile."""
        while True:
            try:
                progress = ray.get(ref, timeout=POLL_S)
                break
            except GetTimeoutError:
                self.loop_at = time.monotonic()  # waiting on a slow consumer is not a hang
                if self.stop_requested:
                    return
            except RayActorError:  # it died: once restarted it asks for what it had not handled
                log.warning("node %s: consumer %s died; it will ask for seq > its progress", self.spec.id, edge.target)
                return
        with self.lock:
            if progress is None:  # it has ended: nothing to keep for it
                self.retained[edge.id].clear()
                return
            if edge.target not in self.acks or progress.handled >= self.acks[edge.target].handled:
                self.acks[edge.target] = progress
            for other in (e for e in self.out_edges if e.target == edge.target and e.id in self.retained):
                while self.retained[other.id] and self.retained[other.id][0][0] <= progress.processed.get(other.target_port, -1):
                    self.retained[other.id].popleft()

    def _resume(self) -> None:
        """A restart: take the newest progress the producers were told, and have them resend the rest."""
        producers = sorted({e.source for e in self.in_edges if e.policy != POLICY_LATEST})
        try:
            acks = ray.get([self.peers[p].ack_for.remote(self.spec.id) for p in producers], timeout=FLUSH_TIMEOUT_S)
            newest = max((a for a in acks if a is not None), key=lambda a: a.handled, default=None)
            if newest is not None:
                self.runner.processed_seq.update(newest.processed)
                self.runner.out_seq.update(newest.out_seq)
                self.handled, self.progress = newest.handled, newest
            me = ray.get_runtime_context().current_actor
            refs = [self.peers[p].resend.remote(self.spec.id, me, dict(self.runner.processed_seq)) for p in producers]
            log.info("node %s: restarted after %d messages handled; %d resent", self.spec.id, self.handled,
                     sum(ray.get(refs, timeout=FLUSH_TIMEOUT_S)))
        except RayError as exc:  # a producer gone too: what it held is lost
            log.warning("node %s: restarted without its producers' help: %s", self.spec.id, exc)

    def _finish(self) -> None:
        """Tell consumers this node has ended, after its last `latest` deliveries."""
        ray.wait(self.latest_refs, num_returns=len(self.latest_refs), timeout=FLUSH_TIMEOUT_S)
        try:
            ray.get([self.peers[c].end.remote(self.spec.id) for c in {e.target for e in self.out_edges}], timeout=FLUSH_TIMEOUT_S)
        except RayError as exc:  # a consumer restarting: the executor tells its next life
            log.warning("node %s: end of stream not confirmed: %s", self.spec.id, exc)


@dataclass
class _Child:
    node_id: str
    actor: Any = None
    incarnation: int = 0
    restarts: int = 0
    restart_at: float | None = None
    started_at: float = 0.0
    finished: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class RayExecutor:
    """Runs a graph on the Ray cluster at `address`, on the Ray session this process already has, or
    on a local Ray that it starts (and stops) on loopback."""

    def __init__(self, graph: Graph, address: str | None = None):
        if graph.record is not None:
            raise GraphError(graph.file, None, "record", "the ray executor does not record: run it on inproc or zmq")
        self.graph, self.address = graph, address
        self.children = {node_id: _Child(node_id) for node_id in graph.nodes}
        self._stop = False

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self, max_seconds: float | None = None, on_metrics: Callable[[list[dict]], None] | None = None,
            metrics_every_s: float | None = None) -> list[dict]:
        """Run until every node has ended; per-node metrics (restarts and Ray node ids included)."""
        started_ray = not ray.is_initialized()
        if started_ray:
            if not self.address:
                pin_loopback()
            ray.init(**({"address": self.address} if self.address else LOCAL_RAY))
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        started = next_poll = time.monotonic()
        next_report = started + metrics_every_s if metrics_every_s else None
        pending: dict[ray.ObjectRef, str] = {}
        try:
            check_placement(self.graph, ray.cluster_resources())
            for node_id, child in self.children.items():
                spec, ins, outs = self.graph.nodes[node_id], self.graph.inputs_of(node_id), self.graph.outputs_of(node_id)
                child.actor = NodeActor.options(**actor_options(spec, len(ins) + len(outs))).remote(spec, ins, outs)
            pending = {self._start(child): node_id for node_id, child in self.children.items()}
            while not self._stop and not all(c.finished for c in self.children.values()):
                for ref in ray.wait(list(pending), num_returns=1, timeout=POLL_S)[0] if pending else []:
                    self._on_exit(self.children[pending.pop(ref)], ref)
                now = time.monotonic()
                pending.update({self._start(c): c.node_id for c in self.children.values() if c.restart_at is not None and now >= c.restart_at})
                if now >= next_poll:  # fresh metrics for the report and the watch on hangs
                    next_poll = now + METRICS_PERIOD_S
                    for child in self._poll_metrics(list(self.children.values())):
                        self._watch(child, now)
                if max_seconds is not None and now - started > max_seconds:
                    log.warning("graph %s: stopping after max_seconds=%s", self.graph.name, max_seconds)
                    break
                if next_report is not None and now >= next_report and on_metrics is not None:
                    on_metrics(self.metrics())
                    next_report += metrics_every_s
        finally:
            self._shutdown(pending)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if started_ray:
                ray.shutdown()
        return self.metrics()

    def metrics(self) -> list[dict]:
        return [{**(c.metrics or NodeMetrics(c.node_id).snapshot()), "restarts": c.restarts} for c in self.children.values()]

    def _start(self, child: _Child) -> ray.ObjectRef:
        child.incarnation += 1
        child.restart_at, child.started_at = None, time.monotonic()
        peers = {node_id: c.actor for node_id, c in self.children.items()}
        return child.actor.run.remote(peers, child.incarnation, [n for n, c in self.children.items() if c.finished])

    def _on_exit(self, child: _Child, ref: ray.ObjectRef) -> None:
        try:
            result = ray.get(ref)
        except RayActorError as exc:
            policy = self.graph.nodes[child.node_id].restart
            child.restarts += 1
            if child.restarts > policy.max_restarts:
                raise GraphFailed(f"node {child.node_id} died after {policy.max_restarts} restarts: {exc}") from None
            delay = min(policy.backoff_s * 2 ** (child.restarts - 1), policy.max_backoff_s)
            log.warning("node %s died; restart %d in %.1fs", child.node_id, child.restarts, delay)
            child.restart_at = time.monotonic() + delay
            return
        except RayError as exc:
            raise GraphFailed(f"node {child.node_id} failed: {exc}") from None
        child.metrics = result["metrics"]
        if result["status"] == STATUS_SETUP_FAILED:
            raise GraphFailed(f"node {child.node_id} failed in setup(): {result['error']}")
        child.finished = result["status"] == STATUS_DONE

    def _watch(self, child: _Child, now: float) -> None:
        """Kill (for Ray to restart) a node whose loop stopped turning, or whose setup() takes too long."""
        spec, state = self.graph.nodes[child.node_id], child.metrics
        hung = spec.hang_timeout_s is not None and state["phase"] == PHASE_RUNNING and state["loop_age_s"] > spec.hang_timeout_s
        slow = spec.startup_timeout_s is not None and state["phase"] == PHASE_STARTING and now - child.started_at > spec.startup_timeout_s
        if (hung or slow) and child.restart_at is None:
            log.error("node %s: %s; killing it", child.node_id, "hung" if hung else "setup too slow")
            ray.kill(child.actor, no_restart=False)

    def _poll_metrics(self, children: list[_Child]) -> list[_Child]:
        """Fresh metrics of these nodes, if still running; those that answered in time."""
        asked = {c.actor.metrics.remote(): c for c in children if not c.finished and c.actor is not None}
        answered = []
        for ref in ray.wait(list(asked), num_returns=len(asked), timeout=POLL_S * 10)[0] if asked else []:
            try:
                asked[ref].metrics = ray.get(ref)
                answered.append(asked[ref])
            except RayError:
                pass  # dying: its last metrics stand
        return answered

    def _shutdown(self, pending: dict[ray.ObjectRef, str]) -> None:
        """Stop every node, keep what they report within the grace period, and remove the actors."""
        actors = [c.actor for c in self.children.values() if c.actor is not None]
        for actor in actors:
            actor.stop.remote()
        for ref in ray.wait(list(pending), num_returns=len(pending), timeout=SHUTDOWN_GRACE_S)[0] if pending else []:
            try:
                self.children[pending.pop(ref)].metrics = ray.get(ref)["metrics"]
            except RayError:
                pass
        self._poll_metrics([self.children[node_id] for node_id in pending.values()])  # those still stopping
        for actor in actors:
            ray.kill(actor)
