"""The `groundloop` command line: run, validate and draw graphs; other packages add commands.

Commands from other packages (sim demos, eval, ...) register through the entry-point group
`groundloop.commands`, trainers under `groundloop train` through `groundloop.train`: each entry is a
function `register(subparsers)`. The pipeline package so never imports the packages built on it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points

from pipeline.graph import GraphError, load_graph
from pipeline.metrics import format_table
from pipeline.zmq_executor import GraphFailed

COMMAND_ENTRY_POINT_GROUP = "groundloop.commands"
TRAIN_ENTRY_POINT_GROUP = "groundloop.train"  # `groundloop train <model>`
EXECUTORS = ("inproc", "zmq")
BUILTIN_COMMANDS = ("run", "validate", "graph", "keys")


def _run(args: argparse.Namespace) -> int:
    graph = load_graph(args.file, args.set)
    if args.executor == "zmq":
        from pipeline.zmq_executor import ZmqExecutor

        executor = ZmqExecutor(graph, machine=args.machine)
    else:
        from pipeline.inproc import InprocExecutor

        executor = InprocExecutor(graph)

    def show(snapshots: list[dict]) -> None:
        print(format_table(snapshots), flush=True)

    metrics = executor.run(max_seconds=args.max_seconds, on_metrics=show, metrics_every_s=args.metrics_every)
    print(f"graph {graph.name} finished on {args.executor}")
    show(metrics)
    if args.metrics_json:
        with open(args.metrics_json, "w") as f:
            json.dump(metrics, f, indent=1)
    return 0


def _validate(args: argparse.Namespace) -> int:
    graph = load_graph(args.file, args.set)
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


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    """The CLI; `with_plugins=False` leaves out the commands of other packages (their imports — torch,
    ManiSkill — cost seconds that `run`, `validate`, `graph` and `keys` do not need)."""
    parser = argparse.ArgumentParser(prog="groundloop", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a graph")
    run.add_argument("file")
    run.add_argument("--executor", choices=EXECUTORS, default="inproc")
    run.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE", help="override a node param")
    run.add_argument("--metrics-every", type=float, default=None, metavar="S", help="print metrics every S seconds")
    run.add_argument("--metrics-json", default=None, help="also write the final metrics to this file")
    run.add_argument("--max-seconds", type=float, default=None)
    run.add_argument("--machine", default=None, help="zmq: run only the nodes placed on this machine")
    run.set_defaults(func=_run)

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
    except (GraphError, GraphFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
