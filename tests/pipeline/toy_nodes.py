"""Small nodes for graph and executor tests (test doubles: they live in tests only)."""
from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.messages import Blob, Tick
from pipeline.node import Node


class CounterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = 10
    payload_bytes: int = 0  # attach an array of this many bytes to each tick
    period_s: float = 0.0  # sleep between ticks (a real-time source)


class Counter(Node):
    """Emits 0..count-1 (with an optional array payload), then finishes."""

    Params = CounterParams
    outputs = {"value": Tick, "blob": Blob}

    def setup(self) -> None:
        self.next_value = 0

    def tick(self) -> bool:
        if self.next_value >= self.params.count:
            return False
        if self.params.period_s:
            time.sleep(self.params.period_s)
        self.emit("value", Tick(value=self.next_value))
        if self.params.payload_bytes:
            data = np.full(self.params.payload_bytes, self.next_value % 251, np.uint8)
            self.emit("blob", Blob(data=data))
        self.next_value += 1
        return True


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: int = 2
    delay_s: float = 0.0  # a slow consumer
    crash_at: int = -1  # os._exit on this value, once (a marker file remembers)
    hang_at: int = -1  # sleep for an hour on this value, once (a marker file remembers)
    marker: str = ""
    setup_s: float = 0.0  # a slow start, like a model loading
    setup_gil_s: int = 0  # a start in C code that holds the GIL (libc sleep through ctypes.PyDLL), like ManiSkill's


class Scale(Node):
    Params = ScaleParams
    inputs = {"value": Tick}
    outputs = {"scaled": Tick}

    def setup(self) -> None:
        time.sleep(self.params.setup_s)
        if self.params.setup_gil_s:
            ctypes.PyDLL(None).sleep(self.params.setup_gil_s)  # PyDLL keeps the GIL: the heartbeat thread starves

    def on_value(self, msg: Tick) -> None:
        if self.params.delay_s:
            time.sleep(self.params.delay_s)
        if msg.value in (self.params.crash_at, self.params.hang_at) and not Path(self.params.marker).exists():
            Path(self.params.marker).write_text("once")
            if msg.value == self.params.crash_at:
                os._exit(17)
            time.sleep(3600)
        self.emit("scaled", Tick(value=msg.value * self.params.factor, stamp_ns=msg.stamp_ns))


class Add(Node):
    """Sums the newest values of two inputs whenever one arrives."""

    inputs = {"a": Tick, "b": Tick}
    outputs = {"sum": Tick}

    def setup(self) -> None:
        self.latest = {"a": 0, "b": 0}

    def on_a(self, msg: Tick) -> None:
        self.latest["a"] = msg.value
        self.emit("sum", Tick(value=self.latest["a"] + self.latest["b"]))

    def on_b(self, msg: Tick) -> None:
        self.latest["b"] = msg.value
        self.emit("sum", Tick(value=self.latest["a"] + self.latest["b"]))


class Total(Node):
    """Sums what it receives and emits the total once, at the end of its input stream."""

    inputs = {"value": Tick}
    outputs = {"total": Tick}

    def setup(self) -> None:
        self.total = 0

    def on_value(self, msg: Tick) -> None:
        self.total += msg.value

    def on_inputs_ended(self) -> None:
        self.emit("total", Tick(value=self.total))


class LongJobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 5
    step_s: float = 0.02


class LongJob(Node):
    """One long handler that reports its progress step by step (a VLM judging frames, say)."""

    Params = LongJobParams
    inputs = {"value": Tick}

    def on_value(self, msg: Tick) -> None:
        for step in range(self.params.steps):
            time.sleep(self.params.step_s)
            self.report_progress(step + 1, self.params.steps, "steps")


class SinkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str = ""  # JSON-lines file of received values
    delay_s: float = 0.0


class Sink(Node):
    """Records what it receives to a file (so a test can read it after a multi-process run)."""

    Params = SinkParams
    inputs = {"value": Tick, "blob": Blob}

    def setup(self) -> None:
        self.file = open(self.params.out, "a") if self.params.out else None
        self.values: list[int] = []

    def on_value(self, msg: Tick) -> None:
        if self.params.delay_s:
            time.sleep(self.params.delay_s)
        self.values.append(msg.value)
        if self.file:
            self.file.write(json.dumps({"value": msg.value, "seq": msg.seq}) + "\n")
            self.file.flush()

    def on_blob(self, msg: Blob) -> None:
        if self.params.delay_s:
            time.sleep(self.params.delay_s)
        if self.file:
            self.file.write(json.dumps({"blob_first": int(msg.data[0]) if msg.data.size else -1,
                                        "blob_size": int(msg.data.size), "seq": msg.seq}) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
