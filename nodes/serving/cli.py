"""`groundloop serve FILE`: start the models a models file lists as Ray Serve deployments, print them,
and keep them up until Ctrl-C (or SIGTERM), then stop everything this command started.

    groundloop serve configs/models.yaml                       # a one-machine cluster, loopback only
    groundloop serve configs/models.yaml --only clip,vlm       # some of the file's deployments
    groundloop serve configs/models.yaml --address HEAD:6379 [--detach]   # onto an existing cluster

With `--address` the cluster is someone else's (`ray start` on each machine): Ctrl-C removes only
this file's deployments, and `--detach` leaves them running and returns at once.

Ray is started in this process (`ray.init`) without the dashboard. With `ray_host` 127.0.0.1 (the
default) every Ray process listens on loopback only (`pipeline.ray_cluster.pin_loopback`: `_node_ip_address` alone
does not do it in Ray 2.60), except each Serve replica's inter-deployment gRPC server, which Ray
Serve 2.60 binds to every interface (behind Ray's token authentication, on by default). Any other
`ray_host` is the address Ray advertises, and Ray then listens on every interface. Serve's HTTP proxy
listens on `http_host:http_port` (127.0.0.1 by default). The cluster lives as long as this process:
other processes join it through the address written to `address_file`. The functions here are
also what the serving tests and benchmark start their clusters with.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.serving.client import ADDRESS_KEY
from pipeline.ray_cluster import pin_loopback
from nodes.serving.config import (DeploymentSpec, ModelsConfig, ServeConfigError, is_loopback, load_models_config,
                                  missing_checkpoint)

log = logging.getLogger(__name__)

WATCH_EVERY_S = 5.0  # how often a running `serve` looks for deployments changing state
EXIT_CONFIG = 2
EXIT_FAILED = 1
STATUS_RUNNING = "RUNNING"


@dataclass
class DeploymentState:
    """One deployment as Serve reports it."""

    name: str
    status: str
    replicas: dict[str, int]  # replica state → count
    message: str = ""


def start_local(config: ModelsConfig) -> str:
    """Start Ray (in this process) and Serve as `config` says; the cluster's address for other processes."""
    if is_loopback(config.ray_host):
        pin_loopback()
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=config.num_cpus, num_gpus=config.num_gpus, include_dashboard=False,
             _node_ip_address=config.ray_host, log_to_driver=False)
    serve.start(http_options={"host": config.http_host, "port": config.http_port})
    return ray.get_runtime_context().gcs_address


def join(address: str, config: ModelsConfig) -> str:
    """Join an existing cluster (several machines: `ray start` on each) and make sure Serve runs on it."""
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": config.http_host, "port": config.http_port})
    return ray.get_runtime_context().gcs_address


def resolved(spec: DeploymentSpec, base: Path) -> DeploymentSpec:
    """`spec` with its checkpoint made absolute against `base`: replicas do not run in our directory."""
    path = Path(spec.checkpoint)
    return spec if path.is_absolute() else spec.model_copy(update={"checkpoint": str((base / path).resolve())})


def check_checkpoints(specs: list[DeploymentSpec]) -> None:
    problems = [p for p in (missing_checkpoint(s) for s in specs) if p]
    if problems:
        raise ServeConfigError("; ".join(problems))


def deploy(specs: list[DeploymentSpec], base: Path | None = None) -> dict[str, Any]:
    """Deploy each spec as its own application (replacing one of the same name); their handles by name.

    Returns when every replica has loaded its model; a model that fails to load raises, naming it."""
    from ray import serve

    from nodes.serving.deployments import build_application

    specs = [resolved(s, base or Path.cwd()) for s in specs]
    check_checkpoints(specs)
    return {s.name: serve.run(build_application(s), name=s.name, route_prefix=None) for s in specs}


def _label(value: Any) -> str:
    """Serve reports states as enums: their plain names."""
    return str(getattr(value, "value", value))


def states() -> list[DeploymentState]:
    """Every application Serve runs, with its replicas by state."""
    from ray import serve

    out = []
    for name, app in serve.status().applications.items():
        replicas: dict[str, int] = {}
        for deployment in app.deployments.values():
            for state, count in deployment.replica_states.items():
                replicas[_label(state)] = replicas.get(_label(state), 0) + count
        out.append(DeploymentState(name, _label(app.status), replicas, app.message))
    return out


def describe(config: ModelsConfig, address: str) -> str:
    """The table `groundloop serve` prints: each deployment, its model and resources, and its state."""
    live = {s.name: s for s in states()}
    rows = [f"{'name':<16}{'kind':<15}{'replicas':<10}{'cpus':>5}{'gpus':>5}{'batch':>6}  {'state':<10}checkpoint"]
    for spec in config.deployments:
        state = live.get(spec.name)
        ready = f"{state.replicas.get(STATUS_RUNNING, 0)}/{spec.num_replicas}" if state else "-"
        options = spec.ray_actor_options
        rows.append(f"{spec.name:<16}{spec.kind:<15}{ready:<10}{options.num_cpus:>5g}{options.num_gpus:>5g}"
                    f"{spec.max_batch_size:>6}  {state.status if state else 'MISSING':<10}{spec.checkpoint}")
    rows.append(f"Ray at {address}; Serve HTTP on {config.http_host}:{config.http_port}")
    rows.append("nodes call these with  model: {serve: NAME}  (ClipPrescan), vlm: {serve: NAME}, "
                "checkpoint: {serve: NAME}  (ActionExpert)")
    exposed = config.exposed()
    rows.append("reachable from other machines: " + ", ".join(exposed) if exposed else
                "listening on loopback only (set ray_host / http_host in the models file to change that), but for "
                "each replica's inter-deployment gRPC port, which Ray Serve binds to every interface "
                "(token-authenticated)")
    return "\n".join(rows)


def write_address_file(path: str | Path, address: str, config_file: str, names: list[str]) -> Path:
    """Tell clients on this machine where the cluster is (written whole, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({ADDRESS_KEY: address, "pid": os.getpid(), "config": config_file,
                                   "deployments": names}))
    os.replace(partial, path)
    return path


def remove_address_file(path: str | Path) -> None:
    """Remove the address file if this process wrote it (another `groundloop serve` may own it now)."""
    path = Path(path)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def shutdown(owned: bool, remove: list[str]) -> None:
    """Stop what we started: all of Serve and Ray when this process owns the cluster, else the
    deployments in `remove`; then leave the """
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if owned:
        serve.shutdown()
    else:
        for name in remove:
            serve.delete(name)
    ray.shutdown()


def head_resources(config: ModelsConfig) -> tuple[float, float]:
    """The CPUs and GPUs a head started here offers: the file's num_cpus/num_gpus, else what Ray would find."""
    cpus = config.num_cpus if config.num_cpus is not None else os.cpu_count() or 1
    if config.num_gpus is not None:
        return cpus, config.num_gpus
    try:
        import torch

        return cpus, torch.cuda.device_count()
    except ImportError:
        return cpus, 0


def selected(config: ModelsConfig, only: str | None) -> ModelsConfig:
    """`config` with just the deployments `--only` names (all when None)."""
    if not only:
        return config
    wanted = [name for name in only.split(",") if name]
    specs = [config.deployment(name) for name in wanted]  # KeyError naming an unknown one
    return config.model_copy(update={"deployments": specs})


def watch(names: list[str], stop: threading.Event) -> None:
    """Block until `stop`, printing a line whenever a deployment changes state (a replica died and is
    being replaced)."""
    last: dict[str, str] = {}
    while not stop.is_set():
        for state in states():
            if state.name in names and last.get(state.name) != state.status:
                if state.name in last:
                    print(f"{state.name}: {last[state.name]} -> {state.status} {state.message}".rstrip(), flush=True)
                last[state.name] = state.status
        stop.wait(WATCH_EVERY_S)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = selected(load_models_config(args.file), args.only)
        check_checkpoints([resolved(s, Path.cwd()) for s in config.deployments])
    except (ServeConfigError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.address is None:
        problem = config.over_reserved(*head_resources(config))
        if problem:
            print(f"error: {args.file}: {problem}", file=sys.stderr)
            return EXIT_CONFIG
    if args.detach and not args.address:
        print("error: --detach needs --address: a cluster this command starts ends with it "
              "(start one with `ray start --head --node-ip-address 127.0.0.1`)", file=sys.stderr)
        return EXIT_CONFIG
    for exposure in config.exposed():
        log.warning("%s: %s is not loopback: reachable from other machines", args.file, exposure)
    names = config.names()
    owned = args.address is None
    stop = threading.Event()  # a signal only sets it: an exception raised inside a Ray call could wedge shutdown
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        address = start_local(config) if owned else join(args.address, config)
        deploy(config.deployments)
        address_file = write_address_file(config.address_file, address, args.file, names)
        print(describe(config, address), flush=True)
        print(f"address written to {address_file}", flush=True)
        if not args.detach:
            print("serving; Ctrl-C stops", flush=True)
            watch(names, stop)
            print("stopping", flush=True)
    except RuntimeError as exc:  # Serve's word for a deployment that failed to start
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if not args.detach:
            remove_address_file(config.address_file)
        shutdown(owned, remove=[] if args.detach else names)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="start the models of a models file as Ray Serve deployments")
    serve.add_argument("file", help="the models file, e.g. configs/models.yaml")
    serve.add_argument("--only", default=None, metavar="NAME[,NAME]", help="start only these deployments")
    serve.add_argument("--address", default=None, help="deploy onto this existing Ray cluster instead of starting one")
    serve.add_argument("--detach", action="store_true", help="with --address: leave the deployments running and return")
    serve.set_defaults(func=_serve)
