"""Graph files: load a YAML graph, validate it completely, and describe its edges.

Every problem is a `GraphError` naming the file, the node and the field, e.g.
``configs/pick_cube.yaml: node 'expert': inputs.cloud: no output 'clod' on node 'env' (outputs: cloud, state)``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.node import Node, ParamsError, resolve_node_class

POLICY_LATEST = "latest"
POLICY_QUEUE = "queue"
POLICIES = (POLICY_LATEST, POLICY_QUEUE)
DEFAULT_QUEUE_SIZE = 16
NODE_KEYS = {"id", "uses", "params", "inputs", "rate_hz", "machine", "restart", "hang_timeout_s", "startup_timeout_s",
             "resources"}
RESOURCE_KEYS = {"num_cpus", "num_gpus", "node"}
INPUT_KEYS = {"from", "policy", "size", "timeout"}
GRAPH_KEYS = {"name", "description", "nodes", "transport", "record"}
RECORD_KEYS = {"out", "streams"}
#: a node class whose outputs depend on its params (a replay source takes those of the node it
#: stands in for) has a classmethod of this name: params -> the concrete class
SPECIALIZE_HOOK = "specialize"


class GraphError(ValueError):
    def __init__(self, file: str, node: str | None, field_name: str | None, problem: str):
        where = file + (f": node '{node}'" if node else "") + (f": {field_name}" if field_name else "")
        super().__init__(f"{where}: {problem}")
        self.file, self.node, self.field, self.problem = file, node, field_name, problem


@dataclass(frozen=True)
class Edge:
    """A connection from one node's output to another node's input, with its delivery policy."""

    source: str
    source_port: str
    target: str
    target_port: str
    policy: str = POLICY_QUEUE
    size: int = DEFAULT_QUEUE_SIZE
    timeout_s: float | None = None

    @property
    def id(self) -> str:
        return f"{self.source}/{self.source_port}->{self.target}/{self.target_port}"


@dataclass
class RestartPolicy:
    max_restarts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0


@dataclass
class ResourceSpec:
    """What a node asks of a Ray cluster (the ray executor; the others ignore it): CPUs and GPUs, and the
    Ray node it must run on, named by a custom resource that node offers (`ray start --resources
    '{"gpu_box": 1}'`) or by Ray's own `node:<ip>`."""

    num_cpus: float | None = None
    num_gpus: float | None = None
    node: str | None = None


@dataclass
class NodeSpec:
    id: str
    uses: str
    cls: type[Node]
    params: BaseModel
    rate_hz: float | None = None
    machine: str | None = None
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    hang_timeout_s: float | None = None
    startup_timeout_s: float | None = None
    raw_params: dict[str, Any] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)


@dataclass
class TransportSpec:
    """Where zmq endpoints live. Default: ipc on one host, tcp bound to loopback only."""

    protocol: str = "ipc"  # or "tcp"; tcp is implied by machines or curve
    bind: str = "127.0.0.1"
    base_port: int = 0  # 0: pick free ports
    machines: dict[str, str] = field(default_factory=dict)  # machine name -> address
    curve: bool = False
    keys_dir: str | None = None


@dataclass
class RecordSpec:
    """Record these output streams ("node/port") of a run to an MCAP file."""

    out: str
    streams: list[str]


@dataclass
class Graph:
    name: str
    file: str
    nodes: dict[str, NodeSpec]
    edges: list[Edge]
    transport: TransportSpec = field(default_factory=TransportSpec)
    raw: dict = field(default_factory=dict)  # the mapping it was built from: what worker processes rebuild
    record: RecordSpec | None = None

    def inputs_of(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.target == node_id]

    def outputs_of(self, node_id: str, port: str | None = None) -> list[Edge]:
        return [e for e in self.edges if e.source == node_id and (port is None or e.source_port == port)]

    def reader_index(self, edge: Edge) -> int:
        """The edge's position among its output's edges: its flag in shared-memory segments."""
        return self.outputs_of(edge.source, edge.source_port).index(edge)


def load_graph(path: str | Path, overrides: list[str] | None = None) -> Graph:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GraphError(str(path), None, None, "file not found") from None
    except yaml.YAMLError as exc:
        raise GraphError(str(path), None, None, f"not valid YAML: {exc}") from None
    return build_graph(raw, str(path), overrides or [])


def apply_overrides(raw: dict, overrides: list[str], file: str) -> None:
    """`node.param=value` (value parsed as YAML) into the raw graph's params."""
    by_id = {n.get("id"): n for n in raw.get("nodes", []) if isinstance(n, dict)}
    for item in overrides:
        key, sep, value = item.partition("=")
        node_id, dot, param = key.partition(".")
        if not sep or not dot or not param:
            raise GraphError(file, None, f"--set {item}", "expected node.param=value")
        if node_id not in by_id:
            raise GraphError(file, node_id, f"--set {item}", "no such node")
        target = by_id[node_id].setdefault("params", {})
        *parents, leaf = param.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)


def build_graph(raw: Any, file: str, overrides: list[str] | None = None) -> Graph:
    if not isinstance(raw, dict):
        raise GraphError(file, None, None, "a graph file must be a mapping with 'name' and 'nodes'")
    unknown = set(raw) - GRAPH_KEYS
    if unknown:
        raise GraphError(file, None, sorted(unknown)[0], f"unknown top-level key (allowed: {', '.join(sorted(GRAPH_KEYS))})")
    raw = copy.deepcopy(raw)
    apply_overrides(raw, overrides or [], file)
    raw_nodes = raw.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise GraphError(file, None, "nodes", "must be a non-empty list")
    nodes: dict[str, NodeSpec] = {}
    raw_inputs: dict[str, dict] = {}
    for index, raw_node in enumerate(raw_nodes):
        spec, inputs = _node_spec(raw_node, index, file)
        if spec.id in nodes:
            raise GraphError(file, spec.id, "id", "duplicate node id")
        nodes[spec.id] = spec
        raw_inputs[spec.id] = inputs
    edges = [edge for node_id, inputs in raw_inputs.items() for edge in _edges(node_id, inputs, nodes, file)]
    graph = Graph(str(raw.get("name", Path(file).stem)), file, nodes, edges, _transport(raw.get("transport"), file), raw)
    _check_cycles(graph)
    graph.record = parse_record(raw.get("record"), nodes, file) if raw.get("record") is not None else None
    for spec in nodes.values():
        if spec.machine is not None and spec.machine not in graph.transport.machines:
            raise GraphError(file, spec.id, "machine", f"unknown machine {spec.machine!r} (transport.machines: {sorted(graph.transport.machines)})")
    return graph


def _node_spec(raw: Any, index: int, file: str) -> tuple[NodeSpec, dict]:
    if not isinstance(raw, dict):
        raise GraphError(file, None, f"nodes[{index}]", "each node must be a mapping")
    node_id = raw.get("id")
    if not isinstance(node_id, str) or not node_id or "/" in node_id:
        raise GraphError(file, None, f"nodes[{index}].id", "missing or invalid id (a non-empty name without '/')")
    unknown = set(raw) - NODE_KEYS
    if unknown:
        raise GraphError(file, node_id, sorted(unknown)[0], f"unknown key (allowed: {', '.join(sorted(NODE_KEYS))})")
    uses = raw.get("uses")
    if not isinstance(uses, str):
        raise GraphError(file, node_id, "uses", "missing node kind")
    try:
        cls = resolve_node_class(uses)
    except (LookupError, TypeError) as exc:
        raise GraphError(file, node_id, "uses", str(exc)) from None
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise GraphError(file, node_id, "params", "must be a mapping")
    try:
        validated = cls.validate_params(params, where=node_id)
    except ParamsError as exc:
        raise GraphError(file, node_id, "params", str(exc).split(": ", 1)[1]) from None
    specialize = getattr(cls, SPECIALIZE_HOOK, None)
    if specialize is not None:
        try:
            cls = specialize(validated)
        except (LookupError, TypeError, ValueError) as exc:
            raise GraphError(file, node_id, "params", str(exc)) from None
    restart = raw.get("restart") or {}
    try:
        restart_policy = RestartPolicy(**restart)
    except TypeError as exc:
        raise GraphError(file, node_id, "restart", str(exc)) from None
    rate = raw.get("rate_hz")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise GraphError(file, node_id, "rate_hz", "must be a positive number")
    if rate is not None and not cls.is_source():
        raise GraphError(file, node_id, "rate_hz", f"{cls.__name__} is not a source (no tick())")
    inputs = raw.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise GraphError(file, node_id, "inputs", "must be a mapping of input port to 'node/port'")
    spec = NodeSpec(
        id=node_id, uses=uses, cls=cls, params=validated, rate_hz=rate, machine=raw.get("machine"),
        restart=restart_policy, hang_timeout_s=raw.get("hang_timeout_s"),
        startup_timeout_s=raw.get("startup_timeout_s"), raw_params=params,
        resources=_resources(raw.get("resources"), node_id, file),
    )
    return spec, inputs


def _resources(raw: Any, node_id: str, file: str) -> ResourceSpec:
    """`{num_cpus: N, num_gpus: N, node: NAME}`, every key optional."""
    if raw is None:
        return ResourceSpec()
    if not isinstance(raw, dict):
        raise GraphError(file, node_id, "resources", "must be a mapping {num_cpus: N, num_gpus: N, node: NAME}")
    unknown = set(raw) - RESOURCE_KEYS
    if unknown:
        raise GraphError(file, node_id, f"resources.{sorted(unknown)[0]}", f"unknown key (allowed: {', '.join(sorted(RESOURCE_KEYS))})")
    for key in ("num_cpus", "num_gpus"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise GraphError(file, node_id, f"resources.{key}", "must be a number >= 0")
    node = raw.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise GraphError(file, node_id, "resources.node", "must be the name of a custom resource of a Ray node (or node:<ip>)")
    return ResourceSpec(raw.get("num_cpus"), raw.get("num_gpus"), node)


def _edges(node_id: str, inputs: dict, nodes: dict[str, NodeSpec], file: str) -> list[Edge]:
    spec = nodes[node_id]
    edges = []
    for port, value in inputs.items():
        where = f"inputs.{port}"
        if port not in spec.cls.inputs:
            raise GraphError(file, node_id, where, f"{spec.cls.__name__} has no input {port!r} (inputs: {', '.join(sorted(spec.cls.inputs)) or 'none'})")
        options = {"from": value} if isinstance(value, str) else value
        if not isinstance(options, dict) or not isinstance(options.get("from"), str):
            raise GraphError(file, node_id, where, "expected 'node/port' or {from: node/port, policy: ..., size: ...}")
        unknown = set(options) - INPUT_KEYS
        if unknown:
            raise GraphError(file, node_id, f"{where}.{sorted(unknown)[0]}", f"unknown key (allowed: {', '.join(sorted(INPUT_KEYS))})")
        source, slash, source_port = options["from"].partition("/")
        if not slash:
            raise GraphError(file, node_id, where, f"{options['from']!r} is not 'node/port'")
        if source not in nodes:
            raise GraphError(file, node_id, where, f"dangling input: no node {source!r}")
        out_type = nodes[source].cls.outputs.get(source_port)
        if out_type is None:
            outputs = ", ".join(sorted(nodes[source].cls.outputs)) or "none"
            raise GraphError(file, node_id, where, f"dangling input: no output {source_port!r} on node {source!r} (outputs: {outputs})")
        in_type = spec.cls.inputs[port]
        if not issubclass(out_type, in_type):
            raise GraphError(file, node_id, where, f"type mismatch: {source}/{source_port} carries {out_type.__name__}, input takes {in_type.__name__}")
        policy = options.get("policy", POLICY_QUEUE)
        if policy not in POLICIES:
            raise GraphError(file, node_id, f"{where}.policy", f"unknown policy {policy!r} (one of: {', '.join(POLICIES)})")
        size = options.get("size", 1 if policy == POLICY_LATEST else DEFAULT_QUEUE_SIZE)
        if not isinstance(size, int) or size < 1 or (policy == POLICY_LATEST and size != 1):
            raise GraphError(file, node_id, f"{where}.size", "must be a positive integer (1 for 'latest')")
        timeout = options.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise GraphError(file, node_id, f"{where}.timeout", "must be a positive number of seconds")
        required = spec.cls.input_timeouts.get(port)
        if required is not None:
            if timeout is not None and timeout > required:
                raise GraphError(file, node_id, f"{where}.timeout", f"{spec.cls.__name__} needs at most {required} s here (a safety watchdog)")
            timeout = required if timeout is None else timeout
        edges.append(Edge(source, source_port, node_id, port, policy, size, timeout))
    return edges


def parse_record(raw: Any, nodes: dict[str, NodeSpec], file: str) -> RecordSpec:
    """`{out: FILE, streams: [node/port, ...]}`; no streams means every output of every node."""
    where = "record"
    if not isinstance(raw, dict):
        raise GraphError(file, None, where, "must be a mapping {out: FILE, streams: [node/port, ...]}")
    unknown = set(raw) - RECORD_KEYS
    if unknown:
        raise GraphError(file, None, f"{where}.{sorted(unknown)[0]}", f"unknown key (allowed: {', '.join(sorted(RECORD_KEYS))})")
    out = raw.get("out")
    if not isinstance(out, str) or not out:
        raise GraphError(file, None, f"{where}.out", "missing file to record to")
    streams = raw.get("streams")
    if streams is None:
        return RecordSpec(out, [f"{n}/{port}" for n, spec in nodes.items() for port in spec.cls.outputs])
    if not isinstance(streams, list) or not streams:
        raise GraphError(file, None, f"{where}.streams", "must be a non-empty list of 'node/port'")
    for index, stream in enumerate(streams):
        node, slash, port = stream.partition("/") if isinstance(stream, str) else ("", "", "")
        if not slash:
            raise GraphError(file, None, f"{where}.streams[{index}]", f"{stream!r} is not 'node/port'")
        if node not in nodes:
            raise GraphError(file, None, f"{where}.streams[{index}]", f"no node {node!r} (nodes: {', '.join(nodes)})")
        if port not in nodes[node].cls.outputs:
            outputs = ", ".join(sorted(nodes[node].cls.outputs)) or "none"
            raise GraphError(file, node, f"{where}.streams[{index}]", f"no output {port!r} on node {node!r} (outputs: {outputs})")
    return RecordSpec(out, list(dict.fromkeys(streams)))


def _transport(raw: Any, file: str) -> TransportSpec:
    if raw is None:
        return TransportSpec()
    if not isinstance(raw, dict):
        raise GraphError(file, None, "transport", "must be a mapping")
    try:
        spec = TransportSpec(**raw)
    except TypeError as exc:
        raise GraphError(file, None, "transport", str(exc)) from None
    if spec.protocol not in ("ipc", "tcp"):
        raise GraphError(file, None, "transport.protocol", f"unknown protocol {spec.protocol!r} (ipc or tcp)")
    if spec.machines and not spec.base_port:
        raise GraphError(file, None, "transport.base_port", "machines need fixed ports: set base_port (node i listens on base_port + i)")
    if spec.curve and not spec.keys_dir:
        raise GraphError(file, None, "transport.keys_dir", "curve: true needs keys_dir (make one with `groundloop keys DIR`)")
    return spec


def _check_cycles(graph: Graph) -> None:
    """A cycle must contain a `latest` edge, or it can deadlock on full queues."""
    lossless: dict[str, list[Edge]] = {n: [] for n in graph.nodes}
    for edge in graph.edges:
        if edge.policy != POLICY_LATEST:
            lossless[edge.source].append(edge)
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[Edge] = []

    def visit(node: str) -> None:
        state[node] = 1
        for edge in lossless[node]:
            if state.get(edge.target) == 1:
                cycle = path[[e.source for e in path].index(edge.target):] if edge.target in [e.source for e in path] else []
                names = " -> ".join([e.source for e in cycle + [edge]] + [edge.target])
                raise GraphError(graph.file, edge.target, f"inputs.{edge.target_port}",
                                 f"cycle without a 'latest' edge: {names}; make one edge in it policy: latest")
            if edge.target not in state:
                path.append(edge)
                visit(edge.target)
                path.pop()
        state[node] = 2

    for node in graph.nodes:
        if node not in state:
            visit(node)
