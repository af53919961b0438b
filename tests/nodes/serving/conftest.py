"""One Ray session per test module (starting Ray and Serve costs seconds): a module defines a
module-scoped `models_config` fixture, and `serving` starts Ray + Serve bound to loopback as that
config says, deploys its models, and stops everything when the module is done."""
from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nodes.serving.cli import deploy, shutdown, start_local
from pipeline.ray_cluster import LOOPBACK_ENV
from nodes.serving.config import LOOPBACK, ModelsConfig

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray sets it when it starts or joins a cluster with token authentication

TEST_CPUS = 2  # the machine's cores: the tests never ask Ray for more


def free_port() -> int:
    """A loopback port nothing listens on now (Serve's HTTP default, 8000, may be someone else's)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def listening_hosts(port: int) -> set[str]:
    """The addresses something on this machine listens on at `port` (IPv4-mapped IPv6 as IPv4)."""
    hosts = set()
    for table in TCP_TABLES:
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            ip_hex, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != TCP_LISTEN:
                continue
            raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))  # LE words
            ip = ipaddress.ip_address(raw)
            hosts.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return hosts


@contextmanager
def loopback_pinned() -> Iterator[None]:
    """What starting or joining a loopback cluster sets in this process (`pin_loopback`, and Ray's own
    token mode), undone afterwards: later tests in this process start Ray their own way."""
    from ray._private import ray_constants

    saved = {name: os.environ.get(name) for name in (LOOPBACK_ENV, AUTH_MODE_ENV)}
    cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_flag
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def serving(models_config: ModelsConfig) -> Iterator[str]:
    """The Ray address of a fresh cluster running `models_config`'s deployments."""
    with loopback_pinned():
        address = start_local(models_config)
        try:
            deploy(models_config.deployments)
            yield address
        finally:
            shutdown(owned=True, remove=[])
