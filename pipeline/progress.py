"""A node's delivery progress, kept in a small memory-mapped file so it survives a crash of the node.

It holds, per input edge, the last seq the node processed, and per output port the next seq it will
emit. A restarted node reads it back: it asks producers to resend only what it had not processed,
drops redelivered duplicates, and numbers its outputs where it left off — so a consumer downstream
de-duplicates any output the crashed life had already sent. Writes are a seqlock-style double buffer:
the state is written to the inactive copy, then one store of the version flips it, so a kill at any
instant leaves one complete copy.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np


class ProgressFile:
    def __init__(self, path: str | Path, inputs: list[str], outputs: list[str]):
        self.inputs, self.outputs = list(inputs), list(outputs)
        width = len(self.inputs) + len(self.outputs)
        size = 8 * (1 + 2 * max(width, 1))
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fresh = os.fstat(fd).st_size != size
            if fresh:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._words = np.frombuffer(self._map, dtype=np.int64)  # [version, copy0..., copy1...]
        self._width = max(width, 1)
        if fresh:
            self._words[1:] = -1
            self._words[1 + len(self.inputs): 1 + width] = 0  # outputs start at seq 0
            self._words[1 + self._width + len(self.inputs): 1 + self._width + width] = 0

    def _copy(self, index: int) -> np.ndarray:
        start = 1 + index * self._width
        return self._words[start: start + self._width]

    def load(self) -> tuple[dict[str, int], dict[str, int]]:
        """(processed seq per input edge, next seq per output port)."""
        state = self._copy(int(self._words[0]) % 2)
        n = len(self.inputs)
        return ({e: int(state[i]) for i, e in enumerate(self.inputs)},
                {p: int(state[n + i]) for i, p in enumerate(self.outputs)})

    def save(self, processed: dict[str, int], next_seq: dict[str, int]) -> None:
        version = int(self._words[0])
        target = self._copy((version + 1) % 2)
        n = len(self.inputs)
        for i, edge in enumerate(self.inputs):
            target[i] = processed[edge]
        for i, port in enumerate(self.outputs):
            target[n + i] = next_seq[port]
        self._words[0] = version + 1

    def close(self) -> None:
        del self._words
        self._map.close()
