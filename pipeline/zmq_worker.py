"""One node in its own process, for the zmq executor: `python -m pipeline.zmq_worker --plan P --node N`.

It reports to the supervisor over a control socket (starting → running → done, heartbeats from a
thread so a minute-long setup() is visibly alive, metrics every second), moves messages between its
sockets and the node runtime, and records its delivery progress so a restart loses nothing.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from pipeline.graph import Graph, build_graph
from pipeline.messages import Message
from pipeline.progress import ProgressFile
from pipeline.record import RecordForwarder
from pipeline.runtime import NodeRunner
from streaming.codec import CodecError, decode, encode
from streaming.security import load_keys, start_authenticator
from streaming.shm import ShmReader, ShmWriter
from streaming.transport import LATEST_WINDOW, EdgeConfig, InputEdge, Publisher, Subscriber

log = logging.getLogger("groundloop.worker")

HEARTBEAT_PERIOD_S = 0.5
METRICS_PERIOD_S = 1.0
PR_SET_PDEATHSIG = 1
MAX_SEGMENTS_PER_PORT = 32
BATCH_S = 0.002  # queued messages handled back to back before one acknowledgement (real-time inputs: one)
IDLE_TICK_S = 0.01  # an idle source (tick returned None) is ticked again after this, or on input
PHASE_STARTING, PHASE_RUNNING, PHASE_DONE = "starting", "running", "done"
EXIT_SETUP_FAILED = 3  # tells the supervisor not to restart


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies, so no node outlives its graph."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Worker:
    def __init__(self, plan: dict[str, Any], node_id: str, incarnation: str, finished: list[str]):
        self.plan, self.node_id, self.incarnation = plan, node_id, incarnation
        self.graph: Graph = build_graph(plan["graph"], plan["file"])
        self.spec = self.graph.nodes[node_id]
        self.context = zmq.Context()
        self.control = self.context.socket(zmq.PUSH)
        self.control.setsockopt(zmq.LINGER, 2000)
        self.control.connect(plan["control"])
        self._control_lock = threading.Lock()
        self.phase = PHASE_STARTING
        self.loop_at = time.monotonic()
        self.stop_requested = False

        self.in_edges = self.graph.inputs_of(node_id)
        self.out_edges = self.graph.outputs_of(node_id)
        self.port_to_edge = {e.target_port: e.id for e in self.in_edges}
        self.edge_to_port = {e.id: e.target_port for e in self.in_edges}
        outputs = list(self.spec.cls.outputs)
        self.progress = ProgressFile(Path(plan["run_dir"]) / f"{node_id}.progress", [e.id for e in self.in_edges], outputs)
        processed, next_seq = self.progress.load()
        self.committed, self.committed_out_seq = dict(processed), dict(next_seq)
        self.uncommitted: deque[tuple[str, int, dict[str, int]]] = deque()  # (edge, seq, out seqs after it)

        self.runner = NodeRunner(self.spec, self.in_edges, self._send, loaner=self._loan)
        self.runner.processed_seq = {e.target_port: processed[e.id] for e in self.in_edges}
        self.runner.out_seq = dict(next_seq)

        keys = load_keys(plan["keys_dir"]) if plan.get("keys_dir") else None
        self.authenticator = start_authenticator(self.context, keys) if keys and self.out_edges else None
        self.writers = {port: ShmWriter(f"{plan['shm_prefix']}-{node_id}-{port}", max_segments=self._segments_needed(port))
                        for port in outputs} if plan["use_shm"] else {}
        self.publisher = None
        if self.out_edges:
            configs = [EdgeConfig(e.id, e.source_port, e.target, e.policy != "latest", e.size if e.policy != "latest" else LATEST_WINDOW,
                                  self.graph.reader_index(e)) for e in self.out_edges]
            self.publisher = Publisher(self.context, plan["endpoints"][node_id]["bind"], configs, self._release,
                                       keys.server_secret if keys else None)
        record = plan.get("record")
        recorded = [s for s in record["streams"] if s.partition("/")[0] == node_id] if record else []
        self.recorder = RecordForwarder(self.context, record["endpoint"], recorded) if recorded else None
        self.reader = ShmReader()
        self.subscriber = None
        if self.in_edges:
            inputs = [InputEdge(e.id, e.source, self.graph.reader_index(e)) for e in self.in_edges]
            connect = {n: plan["endpoints"][n]["connect"] for n in {e.source for e in self.in_edges}}
            curve = (keys.server_public, keys.client_public, keys.client_secret) if keys else None
            self.subscriber = Subscriber(self.context, node_id, incarnation, connect, inputs, processed, curve)
            for producer in finished:
                self.subscriber.mark_ended(producer)
        self.reader_index = {e.id: self.graph.reader_index(e) for e in self.in_edges}
        self.latest_edges = {e.id for e in self.in_edges if e.policy == "latest"}
        self.latest_ports = {e.target_port for e in self.in_edges if e.policy == "latest"}

    def _segments_needed(self, port: str) -> int:
        """Enough segments for every message a port's consumers may hold at once, plus slack."""
        windows = [e.size if e.policy != "latest" else LATEST_WINDOW + 1 for e in self.out_edges if e.source_port == port]
        return min(max(windows, default=0) + 4, MAX_SEGMENTS_PER_PORT)

    # ---- messages -----------------------------------------------------------------------------

    def _release(self, segment: str, reader: int, generation: int) -> None:
        for writer in self.writers.values():
            writer.release(segment, reader, generation)

    def _loan(self, port: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        writer = self.writers.get(port)
        return writer.loan(shape, dtype) if writer is not None else None

    def _send(self, port: str, message: Message) -> None:
        if self.recorder is not None:
            self.recorder.forward(message, self._waiting_on_backpressure)
        if self.publisher is None:
            return
        readers = self.publisher.readers(port)
        used: list[tuple[str, int, int]] = []
        writer = self.writers.get(port)
        placer = (lambda array: writer.place(array, readers, used)) if writer is not None else None
        frames = encode(message.to_payload(), placer)
        self.publisher.publish(port, message.seq, frames, used, should_stop=self._waiting_on_backpressure)

    def _waiting_on_backpressure(self) -> bool:
        """Called while a full lossless edge blocks a send: alive (not hung), and stoppable."""
        self.loop_at = time.monotonic()
        return self.stop_requested

    def _receive(self, socket: zmq.Socket) -> None:
        touched = set()
        for edge_id, seq, frames in self.subscriber.receive(socket):
            touched.add(edge_id)
            index = self.reader_index[edge_id]
            try:
                payload = decode(frames, lambda loc, dtype, shape: self.reader.view(loc, dtype, shape, index))
                message = Message.from_payload(payload)
            except (CodecError, ValueError) as exc:
                self.runner.metrics.codec_errors += 1
                log.error("node %s: dropped a bad message on %s (seq %d): %s", self.node_id, edge_id, seq, exc)
                # done with it, but acknowledged in order: earlier inputs may still await their commit
                self.uncommitted.append((edge_id, seq, dict(self.runner.out_seq)))
                continue
            self.runner.offer(self.edge_to_port[edge_id], message)
        for edge_id in touched & self.latest_edges:  # lossless edges are acknowledged when committed
            self.subscriber.ack(edge_id)

    # ---- reporting ----------------------------------------------------------------------------

    def report(self, event: str, **extra: Any) -> None:
        body = {"node": self.node_id, "incarnation": self.incarnation, "event": event, "phase": self.phase,
                "loop_age_s": time.monotonic() - self.loop_at, **extra}
        with self._control_lock:
            self.control.send(msgpack.packb(body, default=str))

    def _heartbeat(self) -> None:
        while self.phase != PHASE_DONE:
            self.report("heartbeat")
            time.sleep(HEARTBEAT_PERIOD_S)

    def metrics(self) -> dict:
        snapshot = self.runner.metrics.snapshot()
        if self.publisher is not None:
            snapshot["sent_drops"] = self.publisher.drops()
        snapshot["shm_fallbacks"] = sum(w.fallbacks for w in self.writers.values())
        return snapshot

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        threading.Thread(target=self._heartbeat, daemon=True).start()
        self.report("starting")
        try:
            try:
                self.runner.setup()
            except Exception as exc:  # a missing model, a bad device: restarting will not help
                log.exception("node %s: setup() failed", self.node_id)
                self.report("failed", error=f"{type(exc).__name__}: {exc}")
                return EXIT_SETUP_FAILED
            self.loop_at = time.monotonic()  # the hang clock starts with the loop, not with setup
            self.phase = PHASE_RUNNING
            self.report("running")
            self._loop()
            if not self.stop_requested and not self.spec.cls.is_source():
                self.runner.end_inputs()  # every input has ended: the node's last emissions go out with EOS
            self._drain()
        finally:
            self.runner.close()
            self.report("done", metrics=self.metrics(), stopped=self.stop_requested)
            self.phase = PHASE_DONE
            self._close()
        return 0

    def _loop(self) -> None:
        poller = zmq.Poller()
        sockets = list(self.subscriber.sockets.values()) if self.subscriber else []
        for socket in sockets:
            poller.register(socket, zmq.POLLIN)
        if self.publisher is not None:
            poller.register(self.publisher.socket, zmq.POLLIN)
        is_source = self.spec.cls.is_source()
        period = 1.0 / self.spec.rate_hz if self.spec.rate_hz else 0.0
        next_tick = time.monotonic()
        next_metrics = time.monotonic() + METRICS_PERIOD_S
        while not self.stop_requested:
            now = self.loop_at = time.monotonic()
            if is_source and not self.runner.finished and now >= next_tick:
                produced = self.runner.tick()
                next_tick = max(next_tick + period, now - 1.0) if period else now + (IDLE_TICK_S if produced is None else 0.0)
            if now >= next_metrics:
                self.report("metrics", metrics=self.metrics())
                next_metrics = now + METRICS_PERIOD_S
            if is_source and self.runner.finished:
                return
            if not is_source and not self.runner.pending() and (self.subscriber is None or self.subscriber.all_ended()):
                return
            waits = [0.1, next_metrics - now]
            if is_source and not self.runner.finished:
                waits.append(next_tick - now)
            if (timeout := self.runner.next_timeout()) is not None:
                waits.append(timeout)
            wait_ms = 0 if self.runner.pending() else max(0, math.ceil(min(waits) * 1000))
            events = dict(poller.poll(wait_ms))
            for socket in sockets:
                if socket in events:
                    self._receive(socket)
            if self.publisher is not None:
                self.publisher.pump(0)
            if self.subscriber is not None:
                self.subscriber.maybe_hello()
            batch_until = time.monotonic() + BATCH_S
            while (handled := self.runner.step()) is not None:  # a batch, then one acknowledgement
                port, seq = handled
                self.uncommitted.append((self.port_to_edge[port], seq, dict(self.runner.out_seq)))
                if time.monotonic() > batch_until or port in self.latest_ports:
                    break
            self._commit()
            self.runner.check_timeouts()

    def _commit(self) -> None:
        """Acknowledge inputs upstream only once the outputs they caused are processed downstream.

        Until then the upstream producer keeps them: if this node dies, its next life gets them again,
        emits the same outputs under the same seqs, and consumers drop the ones they already have.
        """
        changed = set()
        while self.uncommitted:
            edge_id, seq, out_seq = self.uncommitted[0]
            if self.publisher is not None and any(
                    (done := self.publisher.processed_upto(port)) is not None and done < next_seq - 1
                    for port, next_seq in out_seq.items()):
                break
            self.uncommitted.popleft()
            self.committed[edge_id], self.committed_out_seq = seq, out_seq
            changed.add(edge_id)
        if changed:
            self.progress.save(self.committed, self.committed_out_seq)
            for edge_id in changed:
                self.subscriber.ack(edge_id, processed=self.committed[edge_id])

    def _drain(self) -> None:
        """Send EOS and wait until every lossless consumer has everything; a finished source also
        waits for its own lossless inputs to end (acknowledging and discarding them) so that
        upstream producers can finish too."""
        if self.publisher is not None:
            self.publisher.finish({port: seq - 1 for port, seq in self.runner.out_seq.items()})
        lossless_inputs = [e.id for e in self.in_edges if e.policy != "latest"]
        grace_until = None
        while not self.stop_requested:
            self.loop_at = time.monotonic()
            if self.publisher is not None:
                self.publisher.pump(20)
            self._commit()
            if self.subscriber is not None:
                for socket in self.subscriber.sockets.values():
                    for edge_id, seq, _ in self.subscriber.receive(socket):
                        self.runner.metrics.drops[self.edge_to_port[edge_id]] += 1
                        self.subscriber.ack(edge_id, processed=seq)
                self.subscriber.maybe_hello()
            inputs_done = self.subscriber is None or all(e in self.subscriber.ended for e in lossless_inputs)
            if inputs_done and (self.publisher is None or self.publisher.drained()):
                if self.publisher is None or self.publisher.drained(lossless_only=False):
                    return
                grace_until = grace_until or time.monotonic() + 0.5  # best-effort EOS on latest edges
                if time.monotonic() > grace_until:
                    return
            elif self.publisher is None and self.subscriber is not None:
                time.sleep(0.01)

    def _close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.subscriber is not None:
            self.subscriber.close()
        for writer in self.writers.values():
            writer.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        if self.recorder is not None:
            self.recorder.close()
        self.control.close()
        self.context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one node of a graph (started by the zmq executor)")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--incarnation", required=True)
    parser.add_argument("--finished", default="", help="comma-separated producers that already finished")
    args = parser.parse_args(argv)
    _die_with_parent()
    logging.basicConfig(level=os.environ.get("GROUNDLOOP_LOG", "INFO"),
                        format=f"%(asctime)s {args.node} %(levelname)s %(name)s: %(message)s")
    plan = json.loads(Path(args.plan).read_text())
    worker = Worker(plan, args.node, args.incarnation, [n for n in args.finished.split(",") if n])

    def request_stop(signum: int, frame: Any) -> None:
        worker.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
