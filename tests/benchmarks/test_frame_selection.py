"""benchmarks/frame_selection.py at a tiny scale: the metric arithmetic on hand-made spans, and the
benchmark's core on one tiny shapes-world video with a tiny random CLIP and a VLM double that sees
which frames it was shown (it judges, grounds and answers right only from evidence frames); the CLIP
query texts with and without the options. No timing is asserted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import frame_selection as fs
from nodes.air.config import AirConfig
from nodes.clip.embedder import load_embedder
from nodes.clip_prescan import query_scores, query_texts
from tests.nodes.clip.tiny import CLIP_FPS, CLIP_SECONDS, build_tiny_clip, write_shapes_clip
from tests.nodes.video_doubles import RuleVlm

SPANS = [(1.0, 2.0), (5.0, 6.0)]
EVIDENCE = (1.35, 1.85)  # frames 14–18 of the 10-fps clip
GROUNDED = "[1.4, 1.8]"  # inside the evidence: every frame ViTL reads there is evidence
RIGHT, WRONG = "B", "A"
SMALL_AIR = AirConfig(candidates=4, i_max=2)


def test_a_frame_is_evidence_when_its_time_falls_in_a_span_ends_included():
    hits = fs.evidence_hits([0.5, 1.0, 1.5, 2.0, 3.0, 5.5, 6.01], SPANS)
    assert hits.tolist() == [False, True, True, True, False, True, False]
    assert fs.evidence_hits([1.5], []).tolist() == [False]


def test_recall_counts_spans_hit_and_precision_counts_frames_that_hit():
    assert fs.evidence_recall([1.5], SPANS) == 0.5
    assert fs.evidence_recall([1.2, 1.5, 5.0], SPANS) == 1.0  # two frames in one span count once
    assert fs.evidence_recall([3.0, 7.0], SPANS) == 0.0
    assert fs.evidence_recall([], SPANS) == 0.0
    assert fs.evidence_recall([3.0], []) == 1.0  # nothing to find
    assert fs.evidence_precision([1.5, 3.0, 5.5, 7.0], SPANS) == 0.5
    assert fs.evidence_precision([], SPANS) == 0.0
    overlapping = [(1.0, 2.0), (1.5, 3.0)]
    assert fs.evidence_recall([1.8], overlapping) == 1.0 and fs.evidence_precision([1.8], overlapping) == 1.0


def test_uniform_takes_segment_centres_and_topk_the_best_scores_in_time_order():
    assert fs.uniform_frames(100, 4).tolist() == [12, 37, 62, 87]
    assert fs.uniform_frames(3, 8).tolist() == [0, 1, 2]
    indices = np.array([0, 10, 20, 30])
    assert fs.topk_frames(indices, np.array([0.1, 0.5, 0.5, 0.2]), 2).tolist() == [10, 20]
    assert fs.topk_frames(indices, np.array([0.9, 0.1, 0.2, 0.8]), 2).tolist() == [0, 30]


def test_the_oracle_shows_each_spans_middle_then_spreads_over_the_spans():
    times = np.arange(100) / 10.0  # 10 s at 10 fps
    assert fs.oracle_frames(times, SPANS, 2).tolist() == [15, 55]  # one frame per span: recall 1
    assert fs.oracle_frames(times, SPANS, 4).tolist() == [10, 15, 55, 60]  # then spread over the other frames
    assert fs.oracle_frames(times, SPANS, 1).tolist() == [15]
    assert fs.oracle_frames(times, [(1.0, 1.2)], 8).tolist() == [10, 11, 12]  # a short span: all its frames
    chosen = fs.oracle_frames(times, SPANS, 8)
    assert len(chosen) == 8 and fs.evidence_precision(times[chosen], SPANS) == 1.0


def row(recall: float, precision: float, correct: bool, calls: int, analysis: int = 0, seconds: float = 1.0,
        names_moment: bool = False, kind: str = "count_appear") -> dict:
    return {"kind": kind, "recall": recall, "precision": precision, "correct": correct, "vlm_calls": calls,
            "analysis_calls": analysis, "seconds": seconds, "n_frames": 8, "names_moment": names_moment}


def test_summaries_average_per_question_and_charge_the_prescan_to_clip_methods_only():
    rows = [row(1.0, 0.5, True, 10, 9, names_moment=True, kind="appear_colour"), row(0.5, 0.25, False, 20, 19)]
    air = fs.summarise(rows, n_videos=2, prescan_s=3.0, method=fs.AIR)
    assert air["evidence_recall"] == 0.75 and air["evidence_precision"] == 0.375 and air["qa_accuracy"] == 0.5
    assert air["qa_accuracy_by_kind"] == {"appear_colour": 1.0, "count_appear": 0.0}
    assert air["evidence_recall_moment_questions"] == 1.0 and air["evidence_recall_other_questions"] == 0.5
    assert air["moment_questions"] == 1
    assert fs.summarise(rows[1:], 1, 0.0, fs.AIR)["evidence_recall_moment_questions"] is None
    assert air["vlm_calls_per_video"] == 15 and air["vlm_calls_per_question"] == 15
    assert air["analysis_calls_max_per_question"] == 19 and air["wall_s_per_video"] == pytest.approx(2.5)
    uniform = fs.summarise(rows, n_videos=2, prescan_s=3.0, method=fs.UNIFORM)
    assert uniform["wall_s_per_video"] == pytest.approx(1.0)


def test_the_gains_interval_resamples_questions_in_pairs():
    same = [True, False] * 20
    assert fs.paired_gain_ci(same, same) == (0.0, 0.0)  # identical answers: no gain under any resample
    assert fs.paired_gain_ci([True] * 40, [False] * 40) == (100.0, 100.0)
    lo, hi = fs.paired_gain_ci([True] * 10 + [False] * 30, [False] * 40)  # +25 points from 10 of 40 questions
    assert lo < 25.0 < hi and 5.0 < lo and hi < 45.0
    assert fs.paired_gain_ci([True] * 10 + [False] * 30, [False] * 40) == (lo, hi)  # seeded


def test_air_against_uniform_in_points_with_ratios_and_targets():
    results = {fs.UNIFORM: {8: {"evidence_recall": 0.4, "qa_accuracy": 0.5}},
               fs.AIR: {8: {"evidence_recall": 0.7, "qa_accuracy": 0.52, "analysis_calls_max_per_question": 72}}}
    c = fs.compare(results, 8, AirConfig())
    assert c["recall_gain_pts"] == pytest.approx(30.0) and c["recall_air_over_uniform"] == pytest.approx(1.75)
    assert c["met_recall"] is True
    assert c["accuracy_gain_pts"] == pytest.approx(2.0) and c["met_accuracy"] is False
    assert c["analysis_calls_bound"] == 72 and c["met_analysis_bound"] is True
    assert "accuracy_oracle_gain_pts" not in c
    results[fs.ORACLE] = {8: {"evidence_recall": 1.0, "qa_accuracy": 0.58}}
    assert fs.compare(results, 8, AirConfig())["accuracy_oracle_gain_pts"] == pytest.approx(8.0)
    results[fs.UNIFORM][8]["evidence_recall"] = 0.0
    assert fs.compare(results, 8, AirConfig())["recall_air_over_uniform"] is None
    assert fs.compare({fs.AIR: {}}, 8, AirConfig()) == {}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_embedder(build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip"), device="cpu")
    torch.set_num_threads(previous)


def seeing_vlm(frames: fs.MemoryFrames) -> RuleVlm:
    """A VLM that knows the frames it is shown (by identity): it rates evidence frames 5 and others 1,
    grounds to the evidence, and answers right only when it saw an evidence frame."""
    def decode(image: np.ndarray) -> int:
        return next(i for i, known in enumerate(frames.images) if known is image)

    def rule(shown: list[int], prompt: str) -> str:
        saw = fs.evidence_hits(frames.times_s[shown], [EVIDENCE]).any() if shown else False
        if "Score: <1-5>" in prompt:
            return f"Score: {5 if saw else 1}\nReasoning: {'the shape is there' if saw else 'nothing there'}."
        if "Do not answer yet" in prompt:
            return json.dumps({"spans": [json.loads(GROUNDED)]})
        return RIGHT if saw else WRONG

    return RuleVlm(rule, decode=decode)


def test_the_core_runs_every_method_at_every_budget_on_a_tiny_video(tmp_path: Path, tiny_clip):
    video, _ = write_shapes_clip(tmp_path / "tiny.mp4")
    frames = fs.MemoryFrames.decode(video)
    assert len(frames.images) == CLIP_SECONDS * CLIP_FPS
    item = fs.QaItem("appear_colour-0", "appear_colour", "Which shape appeared?", ["red circle", "blue square", "green star", "cyan cross"], 1,
                     [EVIDENCE])
    vlm = seeing_vlm(frames)
    settings = fs.Settings(budgets=(2, 4), prescan_fps=5.0, air=SMALL_AIR, vlm_spec={"hf": "tests/vlm-double"})
    report = fs.run_benchmark([fs.VideoCase("tiny", frames, [item])], tiny_clip, vlm, settings)

    assert report["n_videos"] == 1 and report["n_questions"] == 1
    results = report["results"]
    assert set(results) == set(fs.METHODS) and all(set(results[m]) == {2, 4} for m in fs.METHODS)
    # uniform: frames 10 and 30 (1.0 s, 3.0 s) miss the evidence; with 4 frames, 15 (1.5 s) hits it
    assert (results[fs.UNIFORM][2]["evidence_recall"], results[fs.UNIFORM][2]["qa_accuracy"]) == (0.0, 0.0)
    assert results[fs.UNIFORM][4]["evidence_recall"] == 1.0 and results[fs.UNIFORM][4]["evidence_precision"] == 0.25
    assert results[fs.UNIFORM][4]["qa_accuracy"] == 1.0 and results[fs.UNIFORM][4]["vlm_calls_per_video"] == 1
    # the oracle shows only evidence frames, so the VLM double answers right at both budgets
    assert all(results[fs.ORACLE][b]["evidence_precision"] == results[fs.ORACLE][b]["qa_accuracy"] == 1.0 for b in (2, 4))
    assert report["comparisons"][2]["accuracy_oracle_gain_pts"] == pytest.approx(100.0)
    # ViTL grounds inside the evidence: everything it reads is evidence; two calls per question
    for budget in (2, 4):
        vitl = results[fs.VITL][budget]
        assert (vitl["evidence_recall"], vitl["evidence_precision"], vitl["qa_accuracy"]) == (1.0, 1.0, 1.0)
        assert vitl["vlm_calls_per_question"] == 2 and vitl["frames_per_question"] <= budget
        air = results[fs.AIR][budget]
        assert 1 <= air["analysis_calls_max_per_question"] <= SMALL_AIR.candidates * SMALL_AIR.i_max
        assert air["vlm_calls_per_question"] == air["analysis_calls_max_per_question"] + 1
        assert 1 <= air["frames_per_question"] <= budget
        assert results[fs.CLIP_TOPK][budget]["frames_per_question"] == budget
        for figures in (results[m][budget] for m in fs.METHODS):
            assert 0.0 <= figures["evidence_recall"] <= 1.0 and 0.0 <= figures["evidence_precision"] <= 1.0
            assert figures["wall_s_per_video"] > 0
        comparison = report["comparisons"][budget]
        assert comparison["analysis_calls_bound"] == SMALL_AIR.candidates * SMALL_AIR.i_max
        assert comparison["met_analysis_bound"] is True and isinstance(comparison["met_recall"], bool)
    assert report["prescan_s_per_video"] > 0
    for budget in (2, 4):  # one question: every resample is that question, so the interval is the gain itself
        comparison = report["comparisons"][budget]
        assert comparison["accuracy_gain_ci95_pts"] == pytest.approx((comparison["accuracy_gain_pts"],) * 2)
    # one row per method, budget and question, each naming its question
    assert len(report["rows"]) == len(fs.METHODS) * 2
    assert {(r["method"], r["budget"]) for r in report["rows"]} == {(m, b) for m in fs.METHODS for b in (2, 4)}
    assert all(r["video"] == "tiny" and r["question"] == "appear_colour-0" and r["kind"] == "appear_colour"
               for r in report["rows"])
    assert results[fs.ORACLE][2]["qa_accuracy_by_kind"] == {"appear_colour": 1.0}
    json.dumps(report)  # every figure is plain JSON


def test_a_missing_model_names_the_command_that_makes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    clip, vlm = tmp_path / "no_clip", tmp_path / "no_vlm"
    assert fs.main(["--quick", "--clip", str(clip), "--vlm", str(vlm)]) == fs.EXIT_MISSING_MODEL
    err = capsys.readouterr().err
    assert f"groundloop train clip --out {clip}" in err and f"groundloop train vlm --out {vlm}" in err


def test_skipping_videos_takes_the_next_held_out_seeds(tmp_path: Path):
    from sim.shapes_world.dataset import HELDOUT, seeds_for

    held_out = seeds_for(HELDOUT, 3, fs.HELDOUT_SEED_START)
    later = fs.heldout_videos(tmp_path, 2, 1.0, skip=1)
    assert list(later) == held_out[1:] and all(path.is_file() for path in later.values())
    assert len(list(later[held_out[1]].parent.glob("*.mp4"))) == 2  # the skipped video is not generated
    first = fs.heldout_videos(tmp_path, 2, 1.0)
    assert list(first) == held_out[:2]
    assert first[held_out[1]] == later[held_out[1]]  # the video both runs name is reused


def test_clip_scores_frames_against_the_question_with_each_option_unless_told_not_to(tmp_path: Path, tiny_clip):
    video, _ = write_shapes_clip(tmp_path / "tiny.mp4")
    frames = fs.MemoryFrames.decode(video)
    options = ["red circle", "blue square", "green star", "cyan cross"]
    item = fs.QaItem("first_of-0", "first_of", "Which of these happened first?", options, 1, [EVIDENCE])
    asked: list[list[str]] = []

    class RecordingClip:
        def embed_images(self, images: np.ndarray) -> np.ndarray:
            return tiny_clip.embed_images(images)

        def embed_texts(self, texts: list[str]) -> np.ndarray:
            asked.append(list(texts))
            return tiny_clip.embed_texts(texts)

    with_options = None
    for option_queries in (True, False):
        settings = fs.Settings(budgets=(3,), methods=(fs.CLIP_TOPK,), prescan_fps=5.0, option_queries=option_queries,
                               vlm_spec={"hf": "tests/vlm-double"})
        report = fs.run_benchmark([fs.VideoCase("tiny", frames, [item])], RecordingClip(), seeing_vlm(frames), settings)
        with_options = with_options or report["rows"][0]
    assert asked == [query_texts(item.question, options), [item.question]]
    scan = fs.prescan(tiny_clip, frames, 5.0)
    best = fs.topk_frames(scan.indices, query_scores(scan.embeddings, tiny_clip.embed_texts(asked[0])), 3)
    assert with_options["n_frames"] == 3  # top-k by the best of the five queries
    assert with_options["recall"] == fs.evidence_recall(frames.times_s[best].tolist(), [EVIDENCE])
