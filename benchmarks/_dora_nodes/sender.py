"""dora-rs source for benchmarks/transport.py: sends uint8 arrays per phase, stamped at hand-over.

Runs in the benchmark venv (.venv-bench), not in groundloop's. Phases come as JSON in BENCH_PHASES:
[[nbytes, count, gap_s], ...]; gap_s > 0 paces messages (latency), 0 sends as fast as possible.
The stamp (CLOCK_MONOTONIC, shared by every process on the host) travels in the metadata, taken
just before send_output so it covers what dora does with a ready array and nothing else.
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
    for nbytes, count, gap_s in phases:
        data = pa.array(np.arange(nbytes, dtype=np.uint64).astype(np.uint8))  # built once, like a ready frame
        next_at = time.monotonic()
        for _ in range(count):
            if gap_s:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + gap_s
            node.send_output("blob", data, {"stamp": time.monotonic_ns()})


if __name__ == "__main__":
    main()
