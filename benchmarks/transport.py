"""One-hop transport benchmark: our zmq executor against raw pyzmq, a memcpy and dora-rs.

    python benchmarks/transport.py [--quick] [--sizes 1KB,40MB] [--no-dora | --dora-python PATH]

For each payload (1 KB, 640×480×3, 1920×1080×3, 4 MB, 40 MB of uint8) it measures
- one-way latency p50/p99, with messages paced (≥ 5 ms apart, more for big payloads) so that no
  message waits behind another: the figure is transport time, not queueing time;
- throughput, sending as fast as the default queue allows, as delivered msg/s and GB/s;
through four paths, all timed as stamp-before-send → arrival in the receiving process (the
monotonic clock is shared by every process on one host):
- ours: a source node → a sink node run by the zmq executor (a process each, ipc://, arrays of
  64 KB and more through a reused shared-memory pool with a descriptor on the socket);
- raw zmq: PUSH/PULL over ipc:// with copy=False between two processes, no framework around it;
- memcpy: np.copyto of the same buffer into a warm preallocated one (the floor for any copy),
  back to back (cache-hot: the targets' basis) and paced like the messages (what one copy costs a
  process that wakes up for it, the regime every transport here runs in);
- dora-rs Python nodes under `dora run`, with its default shared-memory pool (8 MB) and with the
  pool raised to 512 MiB (the fair, tuned baseline: dora copies on the heap what does not fit).
dora lives in its own environment (.venv-bench from benchmarks/requirements-dora.txt, or
--dora-python); without it that part is skipped with the reason.

Targets (issue 2): for payloads of 1 MiB and more, our one-hop p50 ≤ 3× the memcpy p50 of the same
buffer and ≤ dora-rs Python's p50 (tuned pool). A readable table goes first; the last line printed
is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: worker processes inherit this path too
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from benchmarks.transport_nodes import payload  # noqa: E402
from pipeline.graph import build_graph  # noqa: E402
from pipeline.zmq_executor import ZmqExecutor  # noqa: E402

DORA_NODES = Path(__file__).resolve().parent / "_dora_nodes"
DEFAULT_DORA_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DORA_INSTALL = "python3 -m venv .venv-bench && .venv-bench/bin/pip install -r benchmarks/requirements-dora.txt"
DORA_TUNED_POOL = 512 << 20
SETTLE_S = 0.5  # every sender waits this long before its first message: all connections are up
MIN_GAP_S = 0.005  # latency pacing: at least this far apart...
PACE_BYTES_PER_S = 400e6  # ...and far enough apart that a path finishes one message before the next
DORA_DEFAULT_PACE_BYTES_PER_S = 80e6  # dora's heap fallback (over its 8 MB pool) takes ~20 ms per 6 MB here
TARGET_MIN_BYTES = 1 << 20
TARGET_MEMCPY_FACTOR = 3.0
RAW_HEADER = struct.Struct("<qq")  # phase, stamp_ns
OURS = ("ours", "ours_loan")
SYSTEMS = (*OURS, "raw_zmq", "memcpy", "memcpy_paced", "dora_default", "dora_shm512")
LABELS = {"ours": "ours", "ours_loan": "ours, loaned", "raw_zmq": "raw zmq", "memcpy": "memcpy", "memcpy_paced": "memcpy paced",
          "dora_default": "dora 8MB", "dora_shm512": "dora 512MiB"}
THROUGHPUT_SYSTEMS = (*OURS, "raw_zmq", "memcpy", "dora_default", "dora_shm512")


@dataclass(frozen=True)
class Size:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


SIZES = [Size("1KB", (1024,)), Size("640x480x3", (480, 640, 3)), Size("1920x1080x3", (1080, 1920, 3)),
         Size("4MB", (4 << 20,)), Size("40MB", (40 << 20,))]


def latency_gap_s(size: Size, pace_bytes_per_s: float = PACE_BYTES_PER_S) -> float:
    """Pause between paced messages: long enough that none waits behind the previous one."""
    return max(MIN_GAP_S, size.nbytes / pace_bytes_per_s)


@dataclass(frozen=True)
class Phase:
    """One run of messages of one size: `warmup` discarded (connection set-up, first touch of a
    pool segment), then `measured` kept; `gap_s` apart (0: back to back, for throughput)."""

    size: Size
    kind: str  # "latency" or "throughput"
    warmup: int
    measured: int
    gap_s: float

    @property
    def total(self) -> int:
        return self.warmup + self.measured


@dataclass(frozen=True)
class Plan:
    sizes: list[Size]
    latency_samples: dict[str, int]
    throughput_messages: dict[str, int]  # 0: no throughput run for that size
    latency_warmup: int = 3
    throughput_warmup: int = 24  # > the pool segments a queue of 16 can hold: all created first

    def phases(self, pace_bytes_per_s: float = PACE_BYTES_PER_S) -> list[Phase]:
        """Latency phases for every size, then throughput phases: one run per system covers all."""
        latency = [Phase(s, "latency", self.latency_warmup, self.latency_samples[s.name], latency_gap_s(s, pace_bytes_per_s))
                   for s in self.sizes]
        throughput = [Phase(s, "throughput", self.throughput_warmup, self.throughput_messages[s.name], 0.0)
                      for s in self.sizes if self.throughput_messages[s.name]]
        return latency + throughput


def time_limit_s(phases: list[Phase]) -> float:
    """Generous bound for one system's run, so a wedged run fails instead of hanging."""
    return 120.0 + sum(p.total * (p.gap_s + p.size.nbytes / 50e6) for p in phases)


FULL = {"latency": [300, 300, 200, 200, 30], "throughput": [5000, 1000, 300, 300, 50]}
QUICK = {"latency": [50, 50, 30, 30, 10], "throughput": [1000, 150, 60, 60, 0]}  # 40 MB throughput skipped


def make_plan(quick: bool, names: list[str] | None = None, samples: int | None = None,
              messages: int | None = None) -> Plan:
    """The mode's counts for `names` (default: every size); `samples`/`messages` override them."""
    counts = QUICK if quick else FULL
    by_name = {s.name: s for s in SIZES}
    unknown = sorted(set(names or []) - set(by_name))
    if unknown:
        raise ValueError(f"unknown size(s) {', '.join(unknown)} (sizes: {', '.join(by_name)})")
    sizes = [by_name[n] for n in names] if names else list(SIZES)
    latency = {s.name: samples if samples is not None else counts["latency"][SIZES.index(s)] for s in sizes}
    throughput = {s.name: messages if messages is not None else counts["throughput"][SIZES.index(s)] for s in sizes}
    return Plan(sizes, latency, throughput)


# ---- turning arrival records into figures -------------------------------------------------------

Figures = dict[str, dict[str, dict[str, Any]]]  # kind -> size name -> figures


def summarize(rows: np.ndarray, phases: list[Phase]) -> Figures:
    """Figures from int64 rows (phase, stamp_ns, arrival_ns, nbytes), one per delivered message."""
    figures: Figures = {"latency": {}, "throughput": {}}
    for index, phase in enumerate(phases):
        mine = rows[rows[:, 0] == index]
        if (mine[:, 3] != phase.size.nbytes).any():
            raise RuntimeError(f"{phase.size.name}: a message arrived with the wrong size")
        kept = mine[phase.warmup:]
        result: dict[str, Any] = {"sent": phase.total, "delivered": len(mine), "kept": len(kept)}
        if phase.kind == "latency":
            latency_us = (kept[:, 2] - kept[:, 1]) / 1e3
            p50, p99 = np.percentile(latency_us, [50, 99]).tolist() if len(kept) else (None, None)
            result.update(p50_us=p50, p99_us=p99)
        else:
            span_s = (kept[-1, 2] - kept[0, 2]) / 1e9 if len(kept) > 1 else 0.0
            rate = (len(kept) - 1) / span_s if span_s > 0 else None
            result.update(msg_per_s=rate, gb_per_s=rate * phase.size.nbytes / 1e9 if rate else None)
        figures[phase.kind][phase.size.name] = result
    return figures


# ---- (a) our zmq executor -----------------------------------------------------------------------


def bench_ours(plan: Plan, loan: bool = False) -> tuple[Figures, int]:
    """Figures and the source's shared-memory fallbacks (arrays sent inline: every segment busy).
    With `loan` the source fills loaned shared memory in place, so nothing is copied on the way."""
    phases = plan.phases()
    with tempfile.TemporaryDirectory(prefix="gl-bench-ours-") as tmp:
        out = Path(tmp) / "sink.bin"
        raw = {"name": "transport-benchmark", "nodes": [
            {"id": "source", "uses": "benchmarks.transport_nodes.BenchSource",
             "params": {"shapes": [list(p.size.shape) for p in phases], "counts": [p.total for p in phases],
                        "gaps_s": [p.gap_s for p in phases], "settle_s": SETTLE_S, "loan": loan}},
            {"id": "sink", "uses": "benchmarks.transport_nodes.BenchSink", "params": {"out": str(out)},
             "inputs": {"blob": "source/blob"}},
        ]}
        metrics = ZmqExecutor(build_graph(raw, "benchmarks/transport.py")).run(max_seconds=time_limit_s(phases))
        if not out.exists():
            raise RuntimeError("our sink wrote no results (the graph did not finish)")
        rows = np.fromfile(out, np.int64).reshape(-1, 4)
    bounds = np.cumsum([p.total for p in phases])
    rows[:, 0] = np.searchsorted(bounds, rows[:, 0], side="right")  # seq -> phase: the edge is lossless
    fallbacks = sum(int(m.get("shm_fallbacks", 0)) for m in metrics if m.get("node") == "source")
    return summarize(rows, phases), fallbacks


# ---- (b) raw pyzmq ------------------------------------------------------------------------------


def _raw_receiver(endpoint: str, capacity: int, conn: Connection) -> None:
    """PULL side, in its own process: record each arrival, hand the records back at the end."""
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.bind(endpoint)
    conn.send(b"bound")
    rows = np.zeros((capacity, 4), np.int64)
    count = 0
    while True:
        frames = socket.recv_multipart(copy=False)
        arrival = time.monotonic_ns()
        if len(frames) == 1:  # end marker
            break
        phase, stamp = RAW_HEADER.unpack(frames[0].buffer)
        rows[count] = (phase, stamp, arrival, len(frames[1]))
        count += 1
    conn.send_bytes(rows[:count].tobytes())
    socket.close(linger=0)
    context.term()


def bench_raw_zmq(plan: Plan) -> Figures:
    """PUSH here, PULL in a spawned process: one zmq hop over ipc:// with no framework around it."""
    phases = plan.phases()
    spawn = multiprocessing.get_context("spawn")  # no inherited zmq state in the child
    with tempfile.TemporaryDirectory(prefix="gl-bench-raw-") as tmp:
        endpoint = f"ipc://{tmp}/raw.sock"
        here, there = spawn.Pipe()
        receiver = spawn.Process(target=_raw_receiver, args=(endpoint, sum(p.total for p in phases), there), daemon=True)
        receiver.start()
        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        try:
            if not here.poll(30):
                raise RuntimeError("raw zmq receiver did not start")
            here.recv()
            socket.connect(endpoint)
            time.sleep(SETTLE_S)
            for index, phase in enumerate(phases):
                data = payload(phase.size.shape)
                next_at = time.monotonic()
                for _ in range(phase.total):
                    if phase.gap_s:
                        time.sleep(max(0.0, next_at - time.monotonic()))
                        next_at = time.monotonic() + phase.gap_s
                    socket.send_multipart([RAW_HEADER.pack(index, time.monotonic_ns()), data], copy=False)
            socket.send(b"end")
            if not here.poll(time_limit_s(phases)):
                raise RuntimeError("raw zmq receiver did not report")
            rows = np.frombuffer(here.recv_bytes(), np.int64).reshape(-1, 4)
        finally:
            socket.close(linger=0)
            context.term()
            receiver.join(5)
            if receiver.is_alive():
                receiver.terminate()
    return summarize(rows, phases)


# ---- (c) memcpy ---------------------------------------------------------------------------------


def _copy_times_us(source: np.ndarray, target: np.ndarray, count: int, gap_s: float) -> np.ndarray:
    samples = np.empty(max(count, 1), np.int64)
    for i in range(len(samples)):
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter_ns()
        np.copyto(target, source)
        samples[i] = time.perf_counter_ns() - started
    return samples / 1e3


def bench_memcpy(plan: Plan) -> tuple[Figures, Figures]:
    """np.copyto into a warm preallocated buffer: back to back (the target's basis: both buffers
    stay in cache up to the L3 size), and paced like the latency messages (what a copy costs a
    process that wakes up for it, the regime every transport here runs in). Throughput: back to back."""
    warm: Figures = {"latency": {}, "throughput": {}}
    paced: Figures = {"latency": {}, "throughput": {}}
    for size in plan.sizes:
        source, target = payload(size.shape), np.empty(size.shape, np.uint8)
        np.copyto(target, source)
        count, gap = plan.latency_samples[size.name], latency_gap_s(size)
        for figures, times in ((warm, _copy_times_us(source, target, count, 0.0)),
                               (paced, _copy_times_us(source, target, count, gap))):
            p50, p99 = np.percentile(times, [50, 99]).tolist()
            figures["latency"][size.name] = {"p50_us": p50, "p99_us": p99, "kept": len(times)}
        count = plan.throughput_messages[size.name]
        if count:
            started = time.perf_counter_ns()
            for _ in range(count):
                np.copyto(target, source)
            rate = count / ((time.perf_counter_ns() - started) / 1e9)
            warm["throughput"][size.name] = {"msg_per_s": rate, "gb_per_s": rate * size.nbytes / 1e9, "kept": count}
    return warm, paced


# ---- (d) dora-rs --------------------------------------------------------------------------------


def find_dora(python: Path) -> tuple[str | None, str | None]:
    """(dora-rs version, None) if `python` can run dora nodes and its `dora` CLI sits beside it,
    else (None, why not)."""
    if not python.exists():
        return None, f"no {python} (create it: {DORA_INSTALL})"
    if not (python.parent / "dora").exists():
        return None, f"no dora CLI beside {python} (pip install dora-rs-cli there)"
    try:
        probe = subprocess.run([str(python), "-c", "import dora, numpy, pyarrow; from importlib.metadata import version; print(version('dora-rs'))"],
                               capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, f"{python} took over a minute to import dora"
    if probe.returncode != 0:
        return None, f"{python} cannot import dora, numpy and pyarrow: {probe.stderr.strip().splitlines()[-1:]}"
    return probe.stdout.strip(), None


def bench_dora(plan: Plan, python: Path, pool_bytes: int | None) -> Figures:
    """One `dora run` (not `dora up`: a long-lived daemon adds latency) of a sender and a receiver.
    The default pool is paced wider: its heap fallback is slower than our gaps and would queue."""
    phases = plan.phases(PACE_BYTES_PER_S if pool_bytes else DORA_DEFAULT_PACE_BYTES_PER_S)
    with tempfile.TemporaryDirectory(prefix="gl-bench-dora-") as tmp:
        out = Path(tmp) / "receiver.bin"
        sender: dict[str, Any] = {
            "id": "sender", "path": str(python), "args": str(DORA_NODES / "sender.py"), "outputs": ["blob"],
            "env": {"BENCH_PHASES": json.dumps([[p.size.nbytes, p.total, p.gap_s] for p in phases]),
                    "BENCH_SETTLE_S": str(SETTLE_S)}}
        if pool_bytes is not None:
            sender["shared_memory_pool_size"] = pool_bytes
        receiver = {"id": "receiver", "path": str(python), "args": str(DORA_NODES / "receiver.py"),
                    "inputs": {"blob": "sender/blob"}, "env": {"BENCH_OUT": str(out)}}
        dataflow = Path(tmp) / "dataflow.yml"
        dataflow.write_text(json.dumps({"nodes": [sender, receiver]}, indent=1))  # JSON is YAML
        log = Path(tmp) / "dora.log"
        with log.open("w") as sink:
            run = subprocess.run([str(python.parent / "dora"), "run", "--log-level", "error", str(dataflow)], cwd=tmp,
                                 stdout=sink, stderr=subprocess.STDOUT, timeout=time_limit_s(phases))
        if run.returncode != 0 or not out.exists():
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(f"dora run exited with {run.returncode}: {tail}")
        rows = np.fromfile(out, np.int64).reshape(-1, 4)
    return summarize(rows, phases)


# ---- report -------------------------------------------------------------------------------------


def _ratio(ours: float | None, other: float | None) -> float | None:
    return ours / other if ours is not None and other else None


def _latency(results: dict[str, Figures | None], system: str, size: str) -> float | None:
    figures = results.get(system)
    return figures["latency"].get(size, {}).get("p50_us") if figures else None


def _rate(results: dict[str, Figures | None], system: str, size: str) -> float | None:
    figures = results.get(system)
    return figures["throughput"].get(size, {}).get("msg_per_s") if figures else None


def build_report(plan: Plan, quick: bool, results: dict[str, Figures | None], dora: dict[str, Any],
                 shm_fallbacks: int, elapsed_s: float) -> dict[str, Any]:
    others = [s for s in SYSTEMS if s not in OURS]
    ratios = {size.name: {
        **{f"p50_{ours}_over_{other}": _ratio(_latency(results, ours, size.name), _latency(results, other, size.name))
           for ours in OURS for other in others},
        **{f"throughput_{ours}_over_{other}": _ratio(_rate(results, ours, size.name), _rate(results, other, size.name))
           for ours in OURS for other in THROUGHPUT_SYSTEMS if other not in OURS},
    } for size in plan.sizes}
    checks: dict[str, dict[str, Any]] = {ours: {} for ours in OURS}
    for ours_name in OURS:
        for size in plan.sizes:
            if size.nbytes < TARGET_MIN_BYTES:
                continue
            ours, memcpy = _latency(results, ours_name, size.name), _latency(results, "memcpy", size.name)
            dora_p50 = _latency(results, "dora_shm512", size.name)
            limit = TARGET_MEMCPY_FACTOR * memcpy if memcpy is not None else None
            checks[ours_name][size.name] = {
                "ours_p50_us": ours, "memcpy_p50_us": memcpy, "memcpy_limit_us": limit,
                "within_memcpy": ours <= limit if ours is not None and limit is not None else None,
                "dora_shm512_p50_us": dora_p50,
                "within_dora": ours <= dora_p50 if ours is not None and dora_p50 is not None else None,
            }
    verdicts = {}
    for ours_name, per_size in checks.items():
        memcpy_verdicts = [c["within_memcpy"] for c in per_size.values()]
        dora_verdicts = [c["within_dora"] for c in per_size.values()]
        memcpy_met = all(memcpy_verdicts) if per_size and None not in memcpy_verdicts else None
        dora_met = all(dora_verdicts) if per_size and None not in dora_verdicts else None
        verdicts[ours_name] = {
            "per_size": per_size, "memcpy_met": memcpy_met, "dora_met": dora_met,
            "met": memcpy_met and dora_met if memcpy_met is not None and dora_met is not None else None,
        }
    return {
        "benchmark": "transport",
        "mode": "quick" if quick else "full",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                 "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        "sizes": [{"name": s.name, "bytes": s.nbytes, "shape": list(s.shape),
                   "latency_samples": plan.latency_samples[s.name], "throughput_messages": plan.throughput_messages[s.name]}
                  for s in plan.sizes],
        "pacing": {"settle_s": SETTLE_S, "min_gap_s": MIN_GAP_S, "pace_bytes_per_s": PACE_BYTES_PER_S,
                   "dora_default_pace_bytes_per_s": DORA_DEFAULT_PACE_BYTES_PER_S,
                   "latency_warmup": plan.latency_warmup, "throughput_warmup": plan.throughput_warmup},
        "dora": dora,
        "results": results,
        "ours_shm_fallbacks": shm_fallbacks,
        "ratios": ratios,
        "targets": {
            "rule": f"payloads >= {TARGET_MIN_BYTES} B: ours p50 <= {TARGET_MEMCPY_FACTOR:g}x memcpy p50 (back to back) "
                    "and <= dora-rs Python p50 (512 MiB pool)",
            "min_bytes": TARGET_MIN_BYTES, "memcpy_factor": TARGET_MEMCPY_FACTOR, **verdicts,
        },
        "elapsed_s": elapsed_s,
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "met" if ok else "MISSED"


def format_table(report: dict[str, Any]) -> str:
    """Latency, ratio and throughput tables, then dora's status and the targets."""
    results, sizes = report["results"], report["sizes"]
    systems = [s for s in SYSTEMS if results.get(s)]
    lines = ["one-way latency p50 / p99, µs (paced messages, warm-up discarded)"]
    header = f"{'size':<13}{'bytes':>12}" + "".join(f"{LABELS[s]:>19}" for s in systems)
    lines += [header, "-" * len(header)]
    for size in sizes:
        row = f"{size['name']:<13}{size['bytes']:>12,}"
        for system in systems:
            figures = results[system]["latency"].get(size["name"], {})
            row += f"{_fmt(figures.get('p50_us'), 1) + ' / ' + _fmt(figures.get('p99_us'), 1):>19}"
        lines.append(row)
    others = [s for s in systems if s not in OURS]
    for ours in [s for s in OURS if s in systems]:
        lines += ["", f"{LABELS[ours]} / other: latency p50 (lower is better), throughput (higher is better)"]
        header = (f"{'size':<13}" + "".join(f"{'p50/' + LABELS[s]:>20}" for s in others)
                  + "".join(f"{'msg/s/' + LABELS[s]:>20}" for s in others if s in THROUGHPUT_SYSTEMS))
        lines += [header, "-" * len(header)]
        for size in sizes:
            ratios = report["ratios"][size["name"]]
            lines.append(f"{size['name']:<13}" + "".join(f"{_fmt(ratios[f'p50_{ours}_over_{s}'], 2):>20}" for s in others)
                         + "".join(f"{_fmt(ratios[f'throughput_{ours}_over_{s}'], 2):>20}" for s in others if s in THROUGHPUT_SYSTEMS))
    tp_systems = [s for s in systems if s in THROUGHPUT_SYSTEMS]
    lines += ["", "throughput: delivered msg/s (GB/s), back to back with the default queue; -N: dropped by the receiver's queue"]
    header = f"{'size':<13}" + "".join(f"{LABELS[s]:>25}" for s in tp_systems)
    lines += [header, "-" * len(header)]
    for size in sizes:
        if not size["throughput_messages"]:
            lines.append(f"{size['name']:<13}  (not run)")
            continue
        row = f"{size['name']:<13}"
        for system in tp_systems:
            figures = results[system]["throughput"].get(size["name"], {})
            lost = figures.get("sent", 0) - figures.get("delivered", 0)
            cell = f"{_fmt(figures.get('msg_per_s'))} ({_fmt(figures.get('gb_per_s'), 2)})" + (f" -{lost}" if lost > 0 else "")
            row += f"{cell:>25}"
        lines.append(row)
    dora = report["dora"]
    lines += ["", f"dora-rs {dora['version']} (dora run; 8 MB default pool, and {DORA_TUNED_POOL >> 20} MiB)"
              if dora["available"] else f"dora-rs: not available ({dora['reason']})"]
    if report["ours_shm_fallbacks"]:
        lines.append(f"ours: {report['ours_shm_fallbacks']} arrays went inline because every pool segment was busy")
    targets = report["targets"]
    lines.append(f"targets: {targets['rule']}")
    for ours in OURS:
        for name, check in targets[ours]["per_size"].items():
            lines.append(f"  {LABELS[ours]:<13} {name:<13} {_fmt(check['ours_p50_us'], 1)} µs; ≤ 3× memcpy "
                         f"({_fmt(check['memcpy_limit_us'], 1)} µs): {_verdict(check['within_memcpy'])}; "
                         f"≤ dora 512MiB ({_fmt(check['dora_shm512_p50_us'], 1)} µs): {_verdict(check['within_dora'])}")
        lines.append(f"  {LABELS[ours]}: memcpy {_verdict(targets[ours]['memcpy_met'])}, dora {_verdict(targets[ours]['dora_met'])}")
    return "\n".join(lines)


def run(plan: Plan, quick: bool, dora_python: Path | None) -> dict[str, Any]:
    """Every system over the plan; a failing dora run is reported, never fatal."""
    started = time.monotonic()
    results: dict[str, Figures | None] = {"raw_zmq": bench_raw_zmq(plan)}
    results["memcpy"], results["memcpy_paced"] = bench_memcpy(plan)
    results["ours"], fallbacks = bench_ours(plan)
    results["ours_loan"], loan_fallbacks = bench_ours(plan, loan=True)
    fallbacks += loan_fallbacks
    version, reason = find_dora(dora_python) if dora_python is not None else (None, "skipped (--no-dora)")
    results["dora_default"] = results["dora_shm512"] = None
    if version is not None:
        try:
            results["dora_default"] = bench_dora(plan, dora_python, None)
            results["dora_shm512"] = bench_dora(plan, dora_python, DORA_TUNED_POOL)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            version, reason = None, str(exc)
    dora = {"available": version is not None, "version": version, "reason": reason,
            "python": str(dora_python) if dora_python else None, "tuned_pool_bytes": DORA_TUNED_POOL}
    return build_report(plan, quick, results, dora, fallbacks, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, no 40 MB throughput: under a minute")
    parser.add_argument("--sizes", help=f"comma-separated subset of {','.join(s.name for s in SIZES)}")
    parser.add_argument("--samples", type=int, help="latency samples per size (overrides the mode's)")
    parser.add_argument("--messages", type=int, help="throughput messages per size, 0 to skip (overrides the mode's)")
    dora = parser.add_mutually_exclusive_group()
    dora.add_argument("--dora-python", type=Path, default=DEFAULT_DORA_PYTHON,
                      help=f"python of an environment with dora-rs, dora-rs-cli, numpy, pyarrow (default {DEFAULT_DORA_PYTHON})")
    dora.add_argument("--no-dora", action="store_true", help="skip dora-rs")
    args = parser.parse_args(argv)
    if (args.samples is not None and args.samples < 1) or (args.messages is not None and args.messages < 0):
        parser.error("--samples must be at least 1 and --messages at least 0")
    try:
        plan = make_plan(args.quick, args.sizes.split(",") if args.sizes else None, args.samples, args.messages)
    except ValueError as exc:
        parser.error(str(exc))
    report = run(plan, args.quick, None if args.no_dora else args.dora_python)
    print(format_table(report))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
