"""dora-rs source for benchmarks/transport.py: sends uint8 arrays in phases, stamped at hand-over.

Runs in the benchmark venv (.venv-bench), not in groundloop's. BENCH_PHASES is JSON
[[nbytes, count, gap_s], ...]; gap_s > 0 paces messages (latency), 0 sends as fast as possible
(throughput); BENCH_SETTLE_S is a pause before the first message, so the receiver is subscribed.
The stamp (CLOCK_MONOTONIC, shared by every process on one host) and the phase index travel in the
metadata; the stamp is taken just before send_output, so it covers what dora does with a ready
array and nothing else.
"""
import json
import os
import time

import numpy as np
import pyarrow as pa
from dora import Node


def main() -> None:
    phases = json.loads(os.environ["BENCH_PHASES"])
    node = Node()
    time.sleep(float(os.environ.get("BENCH_SETTLE_S", "0")))
    for index, (nbytes, count, gap_s) in enumerate(phases):
        data = pa.array(np.resize(np.arange(256, dtype=np.uint8), nbytes))  # built once, like a ready frame
        next_at = time.monotonic()
        for _ in range(count):
            if gap_s:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + gap_s
            node.send_output("blob", data, {"phase": index, "stamp": time.monotonic_ns()})


if __name__ == "__main__":
    main()
