"""dora-rs sink for benchmarks/transport.py: records (stamp, arrival, bytes) of every message.

Writes int64 triples to BENCH_OUT when its input closes; the benchmark reads them back. It does not
touch the payload beyond its length, like the groundloop sink: what is timed is delivery of a view.
"""
import os
import time

import numpy as np
from dora import Node


def main() -> None:
    rows: list[tuple[int, int, int]] = []
    node = Node()
    for event in node:
        if event["type"] == "INPUT":
            arrived = time.monotonic_ns()
            rows.append((event["metadata"]["stamp"], arrived, len(event["value"])))
        elif event["type"] == "STOP":
            break
    np.asarray(rows, dtype=np.int64).reshape(-1, 3).tofile(os.environ["BENCH_OUT"])


if __name__ == "__main__":
    main()
