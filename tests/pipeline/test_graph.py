import textwrap

import pytest

from pipeline.graph import POLICY_LATEST, GraphError, build_graph, load_graph
from pipeline.node import resolve_node_class

TOY = "tests.pipeline.toy_nodes"


def graph_file(tmp_path, text: str):
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text: str) -> GraphError:
    path = graph_file(tmp_path, text)
    with pytest.raises(GraphError) as info:
        load_graph(path)
    assert str(path) in str(info.value)  # every error names the file
    return info.value


def test_valid_graph_loads_with_policies(tmp_path):
    graph = load_graph(graph_file(tmp_path, f"""
        name: ok
        nodes:
          - id: counter
            uses: {TOY}.Counter
            params: {{count: 3}}
          - id: sink
            uses: {TOY}.Sink
            inputs:
              value: {{from: counter/value, policy: latest, timeout: 0.5}}
              blob: counter/blob
    """))
    latest, queue = sorted(graph.edges, key=lambda e: e.target_port, reverse=True)
    assert (latest.policy, latest.size, latest.timeout_s) == (POLICY_LATEST, 1, 0.5)
    assert (queue.policy, queue.size) == ("queue", 16)
    assert graph.nodes["counter"].params.count == 3


@pytest.mark.parametrize("body, node, field, problem", [
    (f"""
      - id: a
        uses: {TOY}.Nope
     """, "a", "uses", "no Node class 'Nope'"),
    ("""
      - id: a
        uses: nowhere.module.Node
     """, "a", "uses", "module 'nowhere.module' not found"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: a
        uses: {TOY}.Counter
     """, "a", "id", "duplicate node id"),
    (f"""
      - id: a
        uses: {TOY}.Counter
        params: {{count: many}}
     """, "a", "params", "params.count"),
    (f"""
      - id: a
        uses: {TOY}.Counter
        params: {{cuont: 3}}
     """, "a", "params", "params.cuont"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: b
        uses: {TOY}.Sink
        inputs: {{valeu: a/value}}
     """, "b", "inputs.valeu", "has no input 'valeu'"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: b
        uses: {TOY}.Sink
        inputs: {{value: a/vlue}}
     """, "b", "inputs.value", "no output 'vlue' on node 'a'"),
    (f"""
      - id: b
        uses: {TOY}.Sink
        inputs: {{value: ghost/value}}
     """, "b", "inputs.value", "dangling input: no node 'ghost'"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: b
        uses: {TOY}.Sink
        inputs: {{value: a/blob}}
     """, "b", "inputs.value", "type mismatch: a/blob carries Blob, input takes Tick"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: b
        uses: {TOY}.Sink
        inputs: {{value: {{from: a/value, policy: newest}}}}
     """, "b", "inputs.value.policy", "unknown policy 'newest'"),
    (f"""
      - id: a
        uses: {TOY}.Counter
      - id: x
        uses: {TOY}.Add
        inputs: {{a: a/value, b: y/scaled}}
      - id: y
        uses: {TOY}.Scale
        inputs: {{value: x/sum}}
     """, "x", "inputs.b", "cycle without a 'latest' edge"),
    (f"""
      - id: a
        uses: {TOY}.Scale
        rate_hz: 10
     """, "a", "rate_hz", "not a source"),
])
def test_each_mistake_is_named_by_node_and_field(tmp_path, body, node, field, problem):
    error = error_of(tmp_path, "name: bad\nnodes:" + textwrap.indent(textwrap.dedent(body), ""))
    assert (error.node, error.field) == (node, field)
    assert problem in error.problem


def test_a_cycle_with_a_latest_edge_is_fine(tmp_path):
    load_graph(graph_file(tmp_path, f"""
        name: loop
        nodes:
          - id: a
            uses: {TOY}.Counter
          - id: x
            uses: {TOY}.Add
            inputs: {{a: a/value, b: {{from: y/scaled, policy: latest}}}}
          - id: y
            uses: {TOY}.Scale
            inputs: {{value: x/sum}}
    """))


def test_file_level_errors(tmp_path):
    assert "file not found" in str(pytest.raises(GraphError, load_graph, tmp_path / "none.yaml").value)
    assert "not valid YAML" in error_of(tmp_path, "nodes: [").problem
    assert "non-empty list" in error_of(tmp_path, "name: x\nnodes: []").problem
    assert error_of(tmp_path, "name: x\nnodez: []").field == "nodez"


def test_overrides_are_validated_like_the_file():
    raw = {"name": "o", "nodes": [{"id": "a", "uses": f"{TOY}.Counter"}]}
    assert build_graph(raw, "o.yaml", ["a.count=7"]).nodes["a"].params.count == 7
    with pytest.raises(GraphError, match="params.count"):
        build_graph(raw, "o.yaml", ["a.count=lots"])
    with pytest.raises(GraphError, match="no such node"):
        build_graph(raw, "o.yaml", ["b.count=1"])


def test_nodes_resolve_by_dotted_path_and_check_their_declaration():
    assert resolve_node_class(f"{TOY}.Scale").__name__ == "Scale"
    with pytest.raises(LookupError, match="not a registered name"):
        resolve_node_class("Undotted")
