"""The three executors by name, imported only when chosen (zmq and ray pull in heavy modules)."""
from __future__ import annotations

from typing import Any

from pipeline.graph import Graph

INPROC, ZMQ, RAY = "inproc", "zmq", "ray"
EXECUTORS = (INPROC, ZMQ, RAY)


def make_executor(graph: Graph, name: str, *, machine: str | None = None, ray_address: str | None = None) -> Any:
    """An executor for `graph`: `machine` places zmq's nodes, `ray_address` joins a Ray cluster."""
    if name == ZMQ:
        from pipeline.zmq_executor import ZmqExecutor

        return ZmqExecutor(graph, machine=machine)
    if name == RAY:
        from pipeline.ray_executor import RayExecutor

        return RayExecutor(graph, address=ray_address)
    if name == INPROC:
        from pipeline.inproc import InprocExecutor

        return InprocExecutor(graph)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
