"""benchmarks/transport.py at a tiny scale: it runs end to end and its last line is a complete JSON
report. No timing is asserted (a shared 2-core machine), only that every figure is there and sane."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import transport

SIZES = ["1KB", "1920x1080x3"]  # one inline payload, one through shared memory


def test_tiny_run_prints_a_complete_json_report_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert transport.main(["--sizes", ",".join(SIZES), "--samples", "5", "--messages", "30", "--no-dora"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("one-way latency")
    report = json.loads(out[-1])

    assert [s["name"] for s in report["sizes"]] == SIZES
    assert [s["bytes"] for s in report["sizes"]] == [1024, 1920 * 1080 * 3]
    results = report["results"]
    for system in ("ours", "ours_loan", "raw_zmq", "memcpy", "memcpy_paced"):
        for size in SIZES:
            latency = results[system]["latency"][size]
            assert 0 < latency["p50_us"] <= latency["p99_us"], (system, size)
    for system in ("ours", "ours_loan", "raw_zmq", "memcpy"):
        for size in SIZES:
            throughput = results[system]["throughput"][size]
            assert throughput["msg_per_s"] > 0 and throughput["gb_per_s"] > 0, (system, size)
    for kind in ("latency", "throughput"):  # lossless edge: everything sent arrived
        for size in SIZES:
            assert results["ours"][kind][size]["delivered"] == results["ours"][kind][size]["sent"]
    for size in SIZES:
        ratios = report["ratios"][size]
        assert ratios["p50_ours_over_raw_zmq"] > 0 and ratios["p50_ours_over_memcpy"] > 0
        assert ratios["throughput_ours_over_raw_zmq"] > 0
        assert ratios["p50_ours_over_dora_shm512"] is None

    assert report["dora"]["available"] is False and "--no-dora" in report["dora"]["reason"]
    assert results["dora_default"] is None and results["dora_shm512"] is None
    targets = report["targets"]["ours_loan"]
    assert list(targets["per_size"]) == ["1920x1080x3"]  # only payloads of 1 MiB and more
    check = targets["per_size"]["1920x1080x3"]
    assert check["memcpy_limit_us"] == pytest.approx(3 * results["memcpy"]["latency"]["1920x1080x3"]["p50_us"])
    assert isinstance(check["within_memcpy"], bool) and targets["memcpy_met"] is check["within_memcpy"]
    assert check["within_dora"] is None and targets["dora_met"] is None and targets["met"] is None


def test_summarize_turns_arrival_records_into_percentiles_and_rates() -> None:
    plan = transport.make_plan(quick=True, names=["1KB"], samples=4, messages=3)
    latency, throughput = plan.phases()
    stamps = np.arange(latency.total + throughput.total, dtype=np.int64) * 1_000_000
    delays = np.r_[[50_000] * latency.warmup, [10_000, 20_000, 30_000, 40_000], [1_000] * throughput.total]
    phase = np.r_[[0] * latency.total, [1] * throughput.total]
    rows = np.stack([phase, stamps, stamps + delays, np.full(len(stamps), 1024)], axis=1)
    figures = transport.summarize(rows, [latency, throughput])
    assert figures["latency"]["1KB"]["p50_us"] == pytest.approx(25.0)  # warm-up (50 µs) left out
    assert figures["latency"]["1KB"]["kept"] == 4
    assert figures["throughput"]["1KB"]["msg_per_s"] == pytest.approx(1000.0)  # 1 ms apart
    assert figures["throughput"]["1KB"]["gb_per_s"] == pytest.approx(1000.0 * 1024 / 1e9)


def test_dora_is_skipped_with_a_reason_when_its_environment_is_missing(tmp_path: Path) -> None:
    version, reason = transport.find_dora(tmp_path / "bin" / "python")
    assert version is None and "venv" in reason


def test_unknown_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown size"):
        transport.make_plan(quick=True, names=["3MB"])
