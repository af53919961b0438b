"""dora-rs sink for benchmarks/transport.py: records (phase, stamp, arrival, bytes) per message.

Writes raw int64 rows to BENCH_OUT when its input closes; the benchmark reads them back. It looks
only at the payload's length, like the groundloop sink: what is timed is delivery of a usable view.
"""
import os
import time

import numpy as np
from dora import Node


def main() -> None:
    rows: list[tuple[int, int, int, int]] = []
    node = Node()
    for event in node:
        if event["type"] == "INPUT":
            arrival = time.monotonic_ns()
            metadata = event["metadata"]
            rows.append((metadata["phase"], metadata["stamp"], arrival, len(event["value"])))
        elif event["type"] == "STOP":
            break
    np.asarray(rows, dtype=np.int64).reshape(-1, 4).tofile(os.environ["BENCH_OUT"])


if __name__ == "__main__":
    main()
