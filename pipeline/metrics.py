"""Per-node metrics: input rates, handler latency percentiles, queue depth, drops, restarts.

Cheap enough for every message: counters and a bounded ring of recent handler durations.
Snapshots are plain dicts so they travel from worker processes to the supervisor as msgpack.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from typing import Any

import numpy as np

LATENCY_WINDOW = 2048


class NodeMetrics:
    def __init__(self, node_id: str):
        self.node_id = node_id
        self.started = time.monotonic()
        self.received: dict[str, int] = defaultdict(int)
        self.handled: dict[str, int] = defaultdict(int)
        self.drops: dict[str, int] = defaultdict(int)  # superseded on a `latest` input
        self.duplicates: dict[str, int] = defaultdict(int)  # redelivered, already processed
        self.timeouts: dict[str, int] = defaultdict(int)
        self.queue_depth: dict[str, int] = defaultdict(int)
        self.max_queue_depth: dict[str, int] = defaultdict(int)
        self.emitted: dict[str, int] = defaultdict(int)
        self.codec_errors = 0
        self.handler_errors = 0
        self.restarts = 0
        self.counters: dict[str, int] = defaultdict(int)  # node-specific: clamps, holds, ...
        self.progress: dict[str, Any] = {}  # the node's own report: {done, total, unit}
        self._latency_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._port_latency_s: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=LATENCY_WINDOW))
        self._tick_latency_s: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record_handler(self, port: str, seconds: float) -> None:
        self.handled[port] += 1
        self._latency_s.append(seconds)
        self._port_latency_s[port].append(seconds)

    def record_tick(self, seconds: float) -> None:
        self._tick_latency_s.append(seconds)

    def set_depth(self, port: str, depth: int) -> None:
        self.queue_depth[port] = depth
        self.max_queue_depth[port] = max(self.max_queue_depth[port], depth)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        p50, p95 = _percentiles_ms(self._latency_s or self._tick_latency_s)
        return {
            "node": self.node_id,
            "elapsed_s": elapsed,
            "received": dict(self.received),
            "rate_hz": {port: n / elapsed for port, n in self.received.items()},
            "handled": dict(self.handled),
            "emitted": dict(self.emitted),
            "latency_ms_p50": p50,
            "latency_ms_p95": p95,
            "latency_ms_by_port": {port: dict(zip(("p50", "p95"), _percentiles_ms(window)))
                                   for port, window in self._port_latency_s.items()},
            "queue_depth": dict(self.queue_depth),
            "max_queue_depth": dict(self.max_queue_depth),
            "drops": dict(self.drops),
            "duplicates": dict(self.duplicates),
            "timeouts": dict(self.timeouts),
            "codec_errors": self.codec_errors,
            "handler_errors": self.handler_errors,
            "restarts": self.restarts,
            "counters": dict(self.counters),
            "progress": dict(self.progress),
        }


def _percentiles_ms(window: deque[float]) -> tuple[float, float]:
    values = np.asarray(window, dtype=np.float64)
    return tuple((np.percentile(values, [50, 95]) * 1e3).tolist()) if values.size else (0.0, 0.0)


def format_table(snapshots: list[dict[str, Any]]) -> str:
    """A readable per-node summary."""
    header = f"{'node':<16}{'in':>8}{'in Hz':>9}{'out':>8}{'p50 ms':>9}{'p95 ms':>9}{'depth':>7}{'drops':>7}{'dups':>6}{'errors':>8}{'restarts':>9}  counters"
    lines = [header, "-" * len(header)]
    for s in snapshots:
        errors = s["codec_errors"] + s["handler_errors"]
        counters = " ".join(f"{k}={v}" for k, v in sorted(s["counters"].items()))
        lines.append(
            f"{s['node']:<16}{sum(s['received'].values()):>8}{sum(s['rate_hz'].values()):>9.1f}"
            f"{sum(s['emitted'].values()):>8}{s['latency_ms_p50']:>9.2f}{s['latency_ms_p95']:>9.2f}"
            f"{max(s['max_queue_depth'].values(), default=0):>7}{sum(s['drops'].values()):>7}"
            f"{sum(s['duplicates'].values()):>6}{errors:>8}{s['restarts']:>9}  {counters}"
        )
    return "\n".join(lines)
