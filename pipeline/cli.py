"""The `groundloop` command line: run, validate, draw, record and replay graphs; other packages add commands.

Commands from other packages (sim demos, eval, ...) register through the entry-point group
`groundloop.commands`, trainers under `groundloop train` through `groundloop.train`: each entry is a
function `register(subparsers)`. The pipeline package so never imports the packages built on it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import yaml

from pipeline.executors import EXECUTORS, make_executor
from pipeline.graph import Graph, GraphError, load_graph, parse_record
from pipeline.metrics import format_table
from pipeline.node import resolve_node_class
from pipeline.progress_bars import REFRESH_S, ProgressBars
from pipeline.zmq_executor import GraphFailed
from streaming.recording import RecordingError, read_info, repair

COMMAND_ENTRY_POINT_GROUP = "groundloop.commands"
TRAIN_ENTRY_POINT_GROUP = "groundloop.train"  # `groundloop train <model>`
BUILTIN_COMMANDS = ("run", "validate", "graph", "keys", "record", "replay")
BYTES_PER_MB = 1e6


def graph_wide_sets(file: str, sets: list[str]) -> list[str]:
    """`--set PARAM=VALUE` without a node becomes `NODE.PARAM=VALUE` for every node whose params declare
    PARAM: one `--set question=...` reaches the prescan, the selector and the answerer alike."""
    if all("." in item.partition("=")[0] for item in sets):
        return sets
    try:
        nodes = [(n["id"], resolve_node_class(n["uses"])) for n in yaml.safe_load(Path(file).read_text())["nodes"]]
    except (OSError, yaml.YAMLError, LookupError, TypeError, KeyError):
        return sets  # load_graph names what is wrong with the file
    expanded: list[str] = []  # in the order given, so a later --set still wins
    for item in sets:
        param = item.partition("=")[0]
        if "." in param:
            expanded.append(item)
            continue
        targets = [f"{node_id}.{item}" for node_id, cls in nodes if param in cls.Params.model_fields]
        if not targets:
            raise GraphError(file, None, f"--set {item}", f"no node has a param {param!r}")
        expanded += targets
    return expanded


def _run(args: argparse.Namespace) -> int:
    return _execute(load_graph(args.file, graph_wide_sets(args.file, args.set)), args)


def _execute(graph: Graph, args: argparse.Namespace) -> int:
    executor = make_executor(graph, args.executor, machine=args.machine, ray_address=args.ray_address)
    bars = ProgressBars() if (sys.stderr.isatty() if args.progress is None else args.progress) else None
    next_table = time.monotonic() + (args.metrics_every or 0.0)

    def show(snapshots: list[dict]) -> None:
        nonlocal next_table
        if bars is not None:
            bars.update(snapshots)
        if args.metrics_every and time.monotonic() >= next_table:
            next_table += args.metrics_every
            (bars.write if bars is not None else print)(format_table(snapshots))

    periods = [s for s in (args.metrics_every, REFRESH_S if bars is not None else None) if s]
    try:
        metrics = executor.run(max_seconds=args.max_seconds, on_metrics=show,
                               metrics_every_s=min(periods) if periods else None)
        if bars is not None:
            bars.update(metrics)  # where each node ended, which may be after the last refresh
    finally:
        if bars is not None:
            bars.close()
    print(f"graph {graph.name} finished on {args.executor}")
    print(format_table(metrics), flush=True)
    if args.metrics_json:
        with open(args.metrics_json, "w") as f:
            json.dump(metrics, f, indent=1)
    return 0


def _record(args: argparse.Namespace) -> int:
    if args.repair:
        report = repair(args.repair)
        state = "it was complete" if report.was_complete else f"a damaged tail of {report.dropped_bytes} bytes dropped"
        print(f"{report.path}: {report.messages} messages saved ({state})")
        return 0
    if not args.file or not args.out:
        raise RecordingError("record needs a graph file and --out FILE (or --repair FILE)")
    graph = load_graph(args.file, graph_wide_sets(args.file, args.set))
    spec = {"out": args.out, **({"streams": args.streams.split(",")} if args.streams else {})}
    graph.record = parse_record(spec, graph.nodes, graph.file)
    code = _execute(graph, args)
    _describe(args.out)
    return code


def _replay(args: argparse.Namespace) -> int:
    from pipeline.replay import replay_graph

    if args.out and Path(args.out).resolve() == Path(args.file).resolve():
        raise RecordingError(f"--out {args.out} is the recording being replayed")
    replaced = [node for item in args.replace for node in item.split(",") if node]
    graph = replay_graph(args.graph, args.file, replaced, speed=args.speed, loop=args.loop, overrides=graph_wide_sets(args.graph, args.set))
    if args.out:
        graph.record = parse_record({"out": args.out}, graph.nodes, graph.file)
    code = _execute(graph, args)
    if args.out:
        _describe(args.out)
    return code


def _describe(path: str) -> None:
    info = read_info(path)
    size_mb = info.path.stat().st_size / BYTES_PER_MB
    print(f"recorded {sum(info.counts.values())} messages on {len(info.streams)} streams to {path} ({size_mb:.1f} MB)")
    for stream, count in sorted(info.counts.items()):
        print(f"  {stream:32s} {info.streams[stream]:16s} {count}")


def _validate(args: argparse.Namespace) -> int:
    graph = load_graph(args.file, graph_wide_sets(args.file, args.set))
    print(f"{args.file}: ok ({len(graph.nodes)} nodes, {len(graph.edges)} edges)")
    return 0


def _graph(args: argparse.Namespace) -> int:
    from pipeline.draw import to_mermaid, write_png

    graph = load_graph(args.file)
    print(to_mermaid(graph), end="")
    if args.png:
        print(f"wrote {write_png(graph, args.png)}", file=sys.stderr)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from streaming.security import generate_keys

    print(f"CURVE keys in {generate_keys(args.directory)}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=EXECUTORS, default="inproc")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a node param")
    parser.add_argument("--metrics-every", type=float, default=None, metavar="S", help="print metrics every S seconds")
    parser.add_argument("--metrics-json", default=None, help="also write the final metrics to this file")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars of the nodes that report progress (default: when stderr is a terminal)")
    parser.add_argument("--machine", default=None, help="zmq: run only the nodes placed on this machine")
    parser.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="ray: the cluster's head (`ray start --head`); default: a local Ray on loopback")


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    """The CLI; `with_plugins=False` leaves out the commands of other packages (their imports — torch,
    ManiSkill — cost seconds that the built-in commands do not need)."""
    parser = argparse.ArgumentParser(prog="groundloop", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a graph")
    run.add_argument("file")
    _add_run_options(run)
    run.set_defaults(func=_run)

    record = commands.add_parser("record", help="run a graph and record its output streams to an MCAP file")
    record.add_argument("file", nargs="?", help="the graph")
    record.add_argument("--out", help="the recording to write")
    record.add_argument("--streams", default=None, metavar="NODE/PORT,...", help="streams to record (default: all)")
    record.add_argument("--repair", default=None, metavar="FILE",
                        help="instead: rewrite a recording whose writer was killed into a complete file")
    _add_run_options(record)
    record.set_defaults(func=_record)

    replay = commands.add_parser("replay", help="run a graph with some nodes played from a recording")
    replay.add_argument("file", help="the recording")
    replay.add_argument("--graph", required=True)
    replay.add_argument("--replace", action="append", required=True, metavar="NODE[,NODE]",
                        help="nodes whose recorded outputs stand in for them")
    replay.add_argument("--speed", type=float, default=1.0, help="1: recorded timing, 0: as fast as possible")
    replay.add_argument("--loop", action="store_true", help="play the recording again and again")
    replay.add_argument("--out", default=None, help="also record the replayed run (every stream) to this file")
    _add_run_options(replay)
    replay.set_defaults(func=_replay)

    validate = commands.add_parser("validate", help="load and check a graph file")
    validate.add_argument("file")
    validate.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    validate.set_defaults(func=_validate)

    draw = commands.add_parser("graph", help="print a graph as Mermaid (and write a PNG with --png)")
    draw.add_argument("file")
    draw.add_argument("--png", default=None)
    draw.set_defaults(func=_graph)

    keys = commands.add_parser("keys", help="make ZeroMQ CURVE keys for cross-host edges")
    keys.add_argument("directory")
    keys.set_defaults(func=_keys)

    if not with_plugins:
        return parser
    for entry in sorted(entry_points(group=COMMAND_ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    trainers = sorted(entry_points(group=TRAIN_ENTRY_POINT_GROUP), key=lambda e: e.name)
    if trainers:
        train = commands.add_parser("train", help="train one of the project's models")
        models = train.add_subparsers(dest="model", required=True)
        for entry in trainers:
            entry.load()(models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(with_plugins=command not in BUILTIN_COMMANDS).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (GraphError, GraphFailed, RecordingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
