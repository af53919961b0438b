"""Nodes for benchmarks/transport.py: a source that sends arrays in phases, a sink that times them.

The source stamps each Blob with CLOCK_MONOTONIC (shared by every process on one host) just before
emit(), so the sink's `arrival - stamp` is one hop through the executor: encode, the copy into
shared memory, the descriptor on the socket, decode and the handler call. The sink looks only at
the array's size: what is timed is the delivery of a usable view, not a read of the payload.
"""
from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.messages import Blob
from pipeline.node import Node


def payload(shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """A uint8 array of `shape` with every page written (fresh zero pages would flatter copies)."""
    return np.resize(np.arange(256, dtype=np.uint8), int(np.prod(shape))).reshape(shape)


class SourceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shapes: list[list[int]]  # one uint8 array shape per phase
    counts: list[int]  # messages per phase
    gaps_s: list[float]  # pause between messages; 0 sends as fast as flow control allows
    settle_s: float = 0.0  # pause before the first message, so the consumer is surely connected
    loan: bool = False  # fill a loaned shared-memory array in place (as a camera driver would) instead of copying


class BenchSource(Node):
    """Sends each phase's array `count` times. Paced phases sleep in tick(), as a camera driver
    blocks on its next frame; the worker's loop is not involved in the pacing."""

    Params = SourceParams
    outputs = {"blob": Blob}

    def setup(self) -> None:
        self.phase, self.sent = 0, 0
        self.next_at = time.monotonic() + self.params.settle_s
        self.arrays = [payload(shape) for shape in self.params.shapes]  # built once, never mutated: ready frames

    def tick(self) -> bool:
        if self.sent == self.params.counts[self.phase]:
            self.phase, self.sent = self.phase + 1, 0
        if self.phase == len(self.params.counts):
            return False
        if (wait := self.next_at - time.monotonic()) > 0:
            time.sleep(wait)
        self.next_at = time.monotonic() + self.params.gaps_s[self.phase]
        data = self.arrays[self.phase]
        if self.params.loan:  # producing the data into the loan is the driver's work, before the stamp
            loaned = self.loan("blob", data.shape, data.dtype)
            loaned[...] = data
            data = loaned
        self.emit("blob", Blob(data=data, stamp_ns=time.monotonic_ns()))
        self.sent += 1
        return True


class SinkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str  # raw int64 rows (seq, stamp_ns, arrival_ns, nbytes), written at close


class BenchSink(Node):
    """Records every message's timing; writes once at close so the hot path only appends."""

    Params = SinkParams
    inputs = {"blob": Blob}

    def setup(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []

    def on_blob(self, msg: Blob) -> None:
        arrival = time.monotonic_ns()
        self.rows.append((msg.seq, msg.stamp_ns, arrival, msg.data.nbytes))

    def close(self) -> None:
        np.asarray(self.rows, dtype=np.int64).reshape(-1, 4).tofile(self.params.out)
