"""The node API: a plain class with typed ports, pydantic params and one handler per input.

    class Scale(Node):
        class Params(BaseModel):
            factor: float = 2.0
        inputs = {"value": Tick}
        outputs = {"scaled": Tick}

        def on_value(self, msg: Tick) -> None:
            self.emit("scaled", Tick(value=int(msg.value * self.params.factor)))

A source overrides `tick()` and returns False when it has nothing more to give. Nothing happens at
import or construction time beyond validating params: models load in `setup()`. A test can build a
node, call `setup()` and its handlers directly, and read what it emitted (see pipeline.harness).
"""
from __future__ import annotations

import importlib
import logging
from collections import defaultdict
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.messages import Message

NODE_ENTRY_POINT_GROUP = "groundloop.nodes"
HANDLER_PREFIX = "on_"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamsError(ValueError):
    """Params that do not validate; the message names each bad field."""


Emitter = Callable[[str, Message], None]
Loaner = Callable[[str, tuple[int, ...], np.dtype], "np.ndarray | None"]


class Node:
    """Base class of every node. Subclasses declare `inputs`, `outputs` and `Params`."""

    inputs: ClassVar[dict[str, type[Message]]] = {}
    outputs: ClassVar[dict[str, type[Message]]] = {}
    Params: ClassVar[type[BaseModel]] = NoParams
    #: input timeouts a node relies on (e.g. a watchdog): applied when the graph sets none, and a
    #: graph may only shorten them
    input_timeouts: ClassVar[dict[str, float]] = {}

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, *, node_id: str = ""):
        self.node_id = node_id or type(self).__name__
        self.params = self.validate_params(params or {}, where=self.node_id)
        self.log = logging.getLogger(f"groundloop.node.{self.node_id}")
        self._emitter: Emitter | None = None
        self._loaner: Loaner | None = None
        self.counters: dict[str, int] = defaultdict(int)  # reported with the node's metrics
        self.progress: dict[str, Any] = {}  # {done, total, unit}: `groundloop run` draws it as a bar
        self.on_progress: Callable[[], None] | None = None  # set by an executor that cannot poll metrics meanwhile

    # ---- declared by subclasses -----------------------------------------------------------------

    def setup(self) -> None:
        """Load models, open devices. May take long: the supervisor knows a node is starting."""

    def tick(self) -> bool | None:
        """Sources only: produce output. Return True after producing, None when there was nothing to
        do (the executor then waits for input a little before ticking again), False when finished."""
        raise TypeError(f"{type(self).__name__} is not a source (it does not override tick)")

    def on_timeout(self, port: str) -> None:
        """Input `port` got nothing within its configured timeout."""

    def on_inputs_ended(self) -> None:
        """Every producer feeding this node has ended and its inputs are drained: the end of the
        stream, the last chance to emit (a batching node flushes its partial batch here). Called once,
        in graph order, unless the graph was stopped; on zmq and ray a source (a node with `tick`)
        ends with its ticks instead."""

    def close(self) -> None:
        """Release what setup() took. Called once, also after errors."""

    # ---- used by subclasses ---------------------------------------------------------------------

    def emit(self, port: str, message: Message) -> None:
        """Send `message` on output `port`; the executor fills in stream and seq."""
        expected = self.outputs.get(port)
        if expected is None:
            raise KeyError(f"node {self.node_id}: no output port {port!r} (outputs: {sorted(self.outputs)})")
        if not isinstance(message, expected):
            raise TypeError(f"node {self.node_id}: output {port!r} carries {expected.__name__}, got {type(message).__name__}")
        if self._emitter is None:
            raise RuntimeError(f"node {self.node_id}: emit() before an executor attached it")
        self._emitter(port, message)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a named counter in this node's metrics (e.g. clamps, holds)."""
        self.counters[name] += n

    def report_progress(self, done: int, total: int | None = None, unit: str = "items") -> None:
        """How far a long job is (frames decoded, frames judged): shown as a progress bar by
        `groundloop run` and carried in the node's metrics on every executor."""
        self.progress.update(done=int(done), total=None if total is None else int(total), unit=unit)
        if self.on_progress is not None:
            self.on_progress()

    def loan(self, port: str, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """An array to fill and then send on `port` without a copy (on one host it lives in shared
        memory). After `emit` it is read-only: it belongs to the receivers."""
        if port not in self.outputs:
            raise KeyError(f"node {self.node_id}: no output port {port!r} (outputs: {sorted(self.outputs)})")
        loaned = self._loaner(port, shape, np.dtype(dtype)) if self._loaner is not None else None
        return loaned if loaned is not None else np.empty(shape, dtype)

    # ---- used by executors ----------------------------------------------------------------------

    def attach(self, emitter: Emitter, loaner: Loaner | None = None) -> None:
        self._emitter = emitter
        self._loaner = loaner

    @classmethod
    def is_source(cls) -> bool:
        return cls.tick is not Node.tick

    @classmethod
    def handler(cls, port: str) -> str:
        return HANDLER_PREFIX + port

    @classmethod
    def check_declaration(cls) -> None:
        """Every input has a handler, every port a Message type."""
        for kind, ports in (("input", cls.inputs), ("output", cls.outputs)):
            for port, msg_type in ports.items():
                if not (isinstance(msg_type, type) and issubclass(msg_type, Message)):
                    raise TypeError(f"{cls.__name__}: {kind} {port!r} must be a Message type, got {msg_type!r}")
        for port in cls.inputs:
            if not callable(getattr(cls, cls.handler(port), None)):
                raise TypeError(f"{cls.__name__}: input {port!r} has no handler {cls.handler(port)}()")

    @classmethod
    def validate_params(cls, params: BaseModel | dict[str, Any], where: str = "") -> BaseModel:
        if isinstance(params, cls.Params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        try:
            return cls.Params.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ParamsError(f"{where or cls.__name__}: {problems}") from None


def resolve_node_class(uses: str) -> type[Node]:
    """A node class from a registered short name or a dotted path `package.module.Class`."""
    registered = {ep.name: ep.value for ep in entry_points(group=NODE_ENTRY_POINT_GROUP)}
    target = registered.get(uses, uses)
    module_name, _, attribute = target.replace(":", ".").rpartition(".")
    if not module_name:
        raise LookupError(f"unknown node kind {uses!r}: not a registered name ({', '.join(sorted(registered)) or 'none'}) nor a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise LookupError(f"unknown node kind {uses!r}: module {module_name!r} not found ({exc})") from exc
    cls = getattr(module, attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise LookupError(f"unknown node kind {uses!r}: {module_name} has no Node class {attribute!r}")
    cls.check_declaration()
    return cls
