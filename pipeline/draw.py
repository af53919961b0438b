"""Drawings of a graph: Mermaid text (renders on GitHub and in most docs tools) and a PNG via Graphviz."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pipeline.graph import POLICY_LATEST, Graph


def _edge_label(graph: Graph, index: int) -> str:
    edge = graph.edges[index]
    policy = "latest" if edge.policy == POLICY_LATEST else f"queue {edge.size}"
    return f"{edge.source_port}→{edge.target_port} ({policy})"


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR"]
    for node_id, spec in graph.nodes.items():
        shape = ("([", "])") if spec.cls.is_source() else ("[", "]")
        lines.append(f'    {node_id}{shape[0]}"{node_id}<br/><small>{spec.cls.__name__}</small>"{shape[1]}')
    for index, edge in enumerate(graph.edges):
        arrow = "-.->" if edge.policy == POLICY_LATEST else "-->"
        lines.append(f'    {edge.source} {arrow}|"{_edge_label(graph, index)}"| {edge.target}')
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    lines = [f'digraph "{graph.name}" {{', "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for node_id, spec in graph.nodes.items():
        shape = "ellipse" if spec.cls.is_source() else "box"
        lines.append(f'  "{node_id}" [label="{node_id}\\n{spec.cls.__name__}", shape={shape}];')
    for index, edge in enumerate(graph.edges):
        style = "dashed" if edge.policy == POLICY_LATEST else "solid"
        lines.append(f'  "{edge.source}" -> "{edge.target}" [label="{_edge_label(graph, index)}", style={style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_png(graph: Graph, path: str | Path) -> Path:
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("drawing a PNG needs Graphviz's `dot` (apt-get install graphviz; `make setup` installs it)")
    subprocess.run([dot, "-Tpng", "-o", str(path)], input=to_dot(graph).encode(), check=True)
    return Path(path)
