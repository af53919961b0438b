"""Same-host shared memory for large arrays: a reused pool of segments, zero-copy views for readers.

A writer owns a small pool of segments under /dev/shm. Placing an array copies it once into a free
segment and returns a descriptor; only the descriptor crosses the socket. A segment starts with one
flag byte per reader: the writer sets the flags of the readers a message goes to to the segment's
generation (1..255, new for every message), and each reader clears its own flag — only if it still
holds that generation — when the last numpy view of the message is garbage-collected (so a node that
keeps an array keeps its segment). A segment whose flags are all clear is free for reuse; the
generation check makes a late release of an older message harmless. Segments are
reused, not created per message, because page-faulting fresh memory costs ~23 ms per 40 MB here.

When every segment is busy the writer returns None and the caller sends the array inline: a slow
reader costs a copy, never a stall or unbounded memory.
"""
from __future__ import annotations

import ctypes
import itertools
import math
import mmap
import os
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

SHM_DIR = "/dev/shm"
MAX_READERS = 64
HEADER_BYTES = 64  # one flag byte per reader; also keeps the data 64-byte aligned
DEFAULT_MIN_BYTES = 64 * 1024  # smaller arrays are cheaper inline than through a segment
DEFAULT_MAX_SEGMENTS = 8


@dataclass
class _Segment:
    name: str
    capacity: int
    map: mmap.mmap
    generation: int = 0
    loaned: bool = False  # handed to the producer to fill in place, not sent yet
    loans: int = 0  # counts loans, so that a stale loan's end cannot end a newer one

    def __post_init__(self) -> None:
        probe = ctypes.c_char.from_buffer(self.map)
        self.data_address = ctypes.addressof(probe) + HEADER_BYTES
        del probe  # release the export, or the map could never be closed

    def flags(self) -> memoryview:
        return memoryview(self.map)[:MAX_READERS]

    def is_free(self) -> bool:
        return not self.loaned and not any(self.map[:MAX_READERS])


def _open_segment(name: str, size: int, create: bool) -> mmap.mmap:
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, size)
        return mmap.mmap(fd, size if create else 0)
    finally:
        os.close(fd)


class ShmWriter:
    """One output's pool of segments. Not thread-safe: one writer per producing thread."""

    def __init__(self, prefix: str, min_bytes: int = DEFAULT_MIN_BYTES, max_segments: int = DEFAULT_MAX_SEGMENTS):
        self.prefix = prefix
        self.min_bytes = min_bytes
        self.max_segments = max_segments
        self._segments: list[_Segment] = []
        self._names = (f"{prefix}-{os.getpid()}-{i}" for i in itertools.count())  # a restarted writer never collides
        self.placed = 0
        self.fallbacks = 0  # arrays sent inline because every segment was busy

    def loan(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A writable array inside a free segment, to be filled in place and then sent without a copy;
        None when it is too small to be worth it or every segment is busy. Once sent it is read-only:
        it belongs to its readers. A loan that is never sent returns to the pool when garbage-collected."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.min_bytes:
            return None
        segment = self._free_segment(nbytes)
        if segment is None:
            return None
        segment.loaned = True
        segment.loans += 1
        exporter = (ctypes.c_char * nbytes).from_buffer(segment.map, HEADER_BYTES)
        weakref.finalize(exporter, _end_loan, segment, segment.loans)
        return np.frombuffer(exporter, dtype=dtype, count=math.prod(shape)).reshape(shape)

    def place(self, array: np.ndarray, readers: list[int], used: list[tuple[str, int, int]] | None = None) -> list | None:
        """Put `array` in a segment for `readers` — in place if it is a loan, else by one copy into a
        free segment; its descriptor, or None to send it inline."""
        nbytes = array.nbytes
        if nbytes < self.min_bytes or not readers:
            return None
        segment = self._loaned_segment(array)
        if segment is not None:
            segment.loaned = False
            array.flags.writeable = False
        else:
            segment = self._free_segment(nbytes)
            if segment is None:
                self.fallbacks += 1
                return None
            destination = np.frombuffer(segment.map, np.uint8, count=nbytes, offset=HEADER_BYTES)
            np.copyto(destination.view(array.dtype).reshape(array.shape), array, casting="no")
        segment.generation = segment.generation % 255 + 1
        flags = segment.flags()
        for reader in readers:
            flags[reader] = segment.generation
        if used is not None:
            used.extend((segment.name, reader, segment.generation) for reader in readers)
        self.placed += 1
        return [segment.name, nbytes, segment.generation]

    def release(self, name: str, reader: int, generation: int) -> None:
        """Clear `reader`'s flag for one message that will never reach that reader."""
        for segment in self._segments:
            if segment.name == name:
                _clear_flag(segment.map, reader, generation)
                return

    def _loaned_segment(self, array: np.ndarray) -> _Segment | None:
        if not array.flags.c_contiguous:
            return None
        address = array.__array_interface__["data"][0]
        return next((s for s in self._segments if s.loaned and s.data_address == address), None)

    def _free_segment(self, nbytes: int) -> _Segment | None:
        free = [s for s in self._segments if s.is_free()]
        fitting = [s for s in free if s.capacity >= nbytes]
        if fitting:
            return min(fitting, key=lambda s: s.capacity)
        if len(self._segments) >= self.max_segments:
            if not free:
                return None
            self._retire(min(free, key=lambda s: s.capacity))  # too small: make room for a bigger one
        capacity = max(nbytes, self.min_bytes)
        name = next(self._names)
        segment = _Segment(name, capacity, _open_segment(name, HEADER_BYTES + capacity, create=True))
        self._segments.append(segment)
        return segment

    def _retire(self, segment: _Segment) -> None:
        self._segments.remove(segment)
        os.unlink(os.path.join(SHM_DIR, segment.name))
        try:
            segment.map.close()
        except BufferError:  # the producer still holds a sent loan; the map goes with it
            pass

    def close(self) -> None:
        """Unlink every segment; readers that still map one keep their views valid."""
        for segment in list(self._segments):
            try:
                os.unlink(os.path.join(SHM_DIR, segment.name))
            except FileNotFoundError:
                pass
            try:
                segment.map.close()
            except BufferError:  # a view in this process still exports it; it goes with the view
                pass
        self._segments.clear()


class ShmReader:
    """Maps writers' segments (cached) and hands out read-only views that release themselves."""

    def __init__(self, max_cached: int = 64):
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._max_cached = max_cached

    def view(self, descriptor: list, dtype: np.dtype, shape: tuple[int, ...], reader: int) -> np.ndarray:
        name, nbytes, generation = descriptor
        segment = self._map(name)
        count = math.prod(shape)
        expected = count * dtype.itemsize
        if expected != nbytes or HEADER_BYTES + nbytes > len(segment):
            raise ValueError(f"shared-memory segment {name}: descriptor says {nbytes} bytes, {shape} of {dtype} needs {expected}")
        exporter = (ctypes.c_char * max(nbytes, 1)).from_buffer(segment, HEADER_BYTES)
        weakref.finalize(exporter, _clear_flag, segment, reader, generation)
        array = np.frombuffer(exporter, dtype=dtype, count=count).reshape(shape)
        array.flags.writeable = False
        return array

    def _map(self, name: str) -> mmap.mmap:
        segment = self._maps.get(name)
        if segment is None:
            try:
                segment = _open_segment(name, 0, create=False)
            except FileNotFoundError as exc:
                raise ValueError(f"shared-memory segment {name} is gone (its writer exited)") from exc
            self._maps[name] = segment
            if len(self._maps) > self._max_cached:
                self._maps.popitem(last=False)  # unmapped when its last view dies
        else:
            self._maps.move_to_end(name)
        return segment


def _end_loan(segment: _Segment, loan: int) -> None:
    if segment.loans == loan:
        segment.loaned = False


def _clear_flag(segment: mmap.mmap, reader: int, generation: int) -> None:
    if not segment.closed and segment[reader] == generation:
        segment[reader] = 0


def segments_with_prefix(prefix: str) -> list[str]:
    """Names of live segments starting with `prefix` (for leak checks and crash clean-up)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def unlink_prefix(prefix: str) -> int:
    """Remove every segment starting with `prefix`; what a supervisor does after a crash."""
    removed = 0
    for name in segments_with_prefix(prefix):
        try:
            os.unlink(os.path.join(SHM_DIR, name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed
