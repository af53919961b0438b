"""configs/video_qa_air.yaml and configs/video_qa_vitl.yaml: both load and validate; a `--set` without a
node name reaches every node with that param; and each graph runs end to end on a tiny shapes-world
clip through `groundloop run` (inproc), with a tiny random CLIP and a VLM double in place of the
models, printing the JSON result and writing it with a contact sheet."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline import cli
from pipeline.graph import GraphError, load_graph
from nodes.video_qa import ANSWER_BY_LIKELIHOOD
from tests.nodes.clip.tiny import build_tiny_clip, write_shapes_clip
from tests.nodes.video_doubles import RuleVlm

AIR_GRAPH, VITL_GRAPH = "configs/video_qa_air.yaml", "configs/video_qa_vitl.yaml"
QUESTION = "Which shape appeared first?"
OPTIONS = "[red circle, blue square, green star, cyan cross]"
VLM_PATCHES = ("nodes.air.node.SharedVlm", "nodes.video_qa.SharedVlm", "nodes.vitl.SharedVlm")


def test_both_graphs_load_with_their_registered_nodes_and_edges():
    air = load_graph(AIR_GRAPH)
    assert {n: s.uses for n, s in air.nodes.items()} == {
        "prescan": "ClipPrescan", "air": "AirFrameSelection", "qa": "VideoQuestionAnswer", "report": "VideoReport"}
    assert sorted(e.id for e in air.edges) == sorted([
        "prescan/scores->air/scores", "air/selection->qa/selection", "qa/answer->report/answer",
        "air/selection->report/selection", "prescan/scores->report/scores"])
    assert air.nodes["prescan"].params.model == "models/clip_shapes"
    assert air.nodes["air"].params.vlm == air.nodes["qa"].params.vlm == {"hf": "models/vlm_shapes"}
    vitl = load_graph(VITL_GRAPH)
    assert {n: s.uses for n, s in vitl.nodes.items()} == {"vitl": "VideoInTheLoop", "report": "VideoReport"}
    assert sorted(e.id for e in vitl.edges) == ["vitl/answer->report/answer", "vitl/spans->report/selection"]
    assert vitl.nodes["vitl"].params.vlm == {"hf": "models/vlm_shapes"}
    # the shipped VLM answers by scoring the options
    assert air.nodes["qa"].params.answer_by == vitl.nodes["vitl"].params.answer_by == ANSWER_BY_LIKELIHOOD


def test_a_set_without_a_node_reaches_every_node_with_that_param():
    sets = cli.graph_wide_sets(AIR_GRAPH, ["question=What is x.y?", "report.print_json=false", "video=v.mp4"])
    assert sets == ["prescan.question=What is x.y?", "air.question=What is x.y?", "qa.question=What is x.y?",
                    "report.print_json=false", "prescan.video=v.mp4", "air.video=v.mp4", "qa.video=v.mp4",
                    "report.video=v.mp4"]
    graph = load_graph(AIR_GRAPH, cli.graph_wide_sets(AIR_GRAPH, [f"options={OPTIONS}", f"question={QUESTION}"]))
    assert graph.nodes["air"].params.options == graph.nodes["qa"].params.options == OPTIONS.strip("[]").split(", ")
    assert graph.nodes["prescan"].params.options == graph.nodes["qa"].params.options  # CLIP scores them too
    assert {graph.nodes[n].params.question for n in ("prescan", "air", "qa")} == {QUESTION}
    assert cli.graph_wide_sets(AIR_GRAPH, ["qa.n_samples=1"]) == ["qa.n_samples=1"]
    with pytest.raises(GraphError, match="no node has a param 'budgett'"):
        cli.graph_wide_sets(AIR_GRAPH, ["budgett=8"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video_qa")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"clip": build_tiny_clip(root / "tiny_clip"), "video": write_shapes_clip(root / "tiny.mp4")[0]}
    torch.set_num_threads(previous)


@pytest.fixture
def vlm_double(monkeypatch: pytest.MonkeyPatch) -> RuleVlm:
    """One VLM double for every node: rates each frame 4, grounds to 1-2 s, answers B."""
    def rule(frames: list[int], prompt: str) -> str:
        if "Score: <1-5>" in prompt:
            return "Score: 4\nReasoning: a shape is in view."
        if "Do not answer yet" in prompt:
            return '{"spans": [[1.0, 2.0]]}'
        return "B"

    vlm = RuleVlm(rule, decode=lambda image: 0)
    for target in VLM_PATCHES:
        monkeypatch.setattr(target, lambda spec: vlm)
    return vlm


def run_graph(graph: str, video: Path, out: Path, *extra: str) -> int:
    return cli.main(["run", graph, "--set", f"video={video}", "--set", f"question={QUESTION}", "--set",
                     f"options={OPTIONS}", "--set", f"report.out_json={out / 'result.json'}",
                     "--set", f"report.contact_sheet={out / 'sheet.png'}", *extra])


def test_the_air_graph_answers_a_tiny_clip_end_to_end(tiny, vlm_double, tmp_path, capsys):
    code = run_graph(AIR_GRAPH, tiny["video"], tmp_path, "--set", f"prescan.model={tiny['clip']}",
                     "--set", f"prescan.cache_dir={tmp_path / 'cache'}", "--set", "prescan.fps=5")
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in printed] == [result]
    assert (result["question"], result["answer"], result["choice"], result["letter"]) == (QUESTION, "blue square", 1, "B")
    assert 1 <= len(result["frames"]) <= 8  # A.I.R.'s adaptive budget is 8 for a 4 s video
    assert all(f["clip_score"] is not None and "score 4" in f["reason"] for f in result["frames"])
    assert result["spans_s"] and (tmp_path / "sheet.png").stat().st_size > 0
    analysis = [p for p in vlm_double.prompts if "Score: <1-5>" in p]
    assert len(analysis) == len(vlm_double.prompts) - 1  # every call but the answer was an analysis


def test_the_vitl_graph_answers_a_tiny_clip_end_to_end(tiny, vlm_double, tmp_path):
    assert run_graph(VITL_GRAPH, tiny["video"], tmp_path, "--set", "budget=4") == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["answer"], result["choice"]) == ("blue square", 1) and result["spans_s"] == [[1.0, 2.0]]
    assert 1 <= len(result["frames"]) <= 4 and all(1.0 <= f["time_s"] <= 2.0 for f in result["frames"])
    assert result["selection_reasons"] == ['{"spans": [[1.0, 2.0]]}'] and len(vlm_double.prompts) == 2
