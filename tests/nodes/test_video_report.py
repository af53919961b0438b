"""VideoReport on a tiny real video (each grey level tells its frame): the JSON result pairs an Answer
with its Selection by stamp, lists the frames in time order with times, CLIP scores and reasons, and is
printed and written; the contact sheet holds one thumbnail per selected frame."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nodes import video_report as vr
from pipeline.harness import NodeHarness
from pipeline.messages import Answer, FrameScores, Selection
from tests.nodes.test_video_ingest import write_clip

N_FRAMES, FRAME_MS = 24, 100
THUMB = 32
COLUMNS = 4
QUESTION = "Which colour appears first?"
STAMP = 1_000


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.mp4", [k * FRAME_MS for k in range(N_FRAMES)])


@pytest.fixture
def report(tmp_path: Path, clip: Path):
    def make(**params) -> NodeHarness:
        return NodeHarness(vr.VideoReport, {"video": str(clip), "out_json": str(tmp_path / "out" / "result.json"),
                                            "contact_sheet": str(tmp_path / "out" / "sheet.png"), "thumb_side": THUMB,
                                            "columns": COLUMNS, **params})
    return make


def selection(frames: list[int], reasons: list[str], stamp_ns: int = STAMP) -> Selection:
    return Selection(stamp_ns=stamp_ns, frame_indices=np.array(frames, np.int64), spans_s=np.array([[0.3, 1.2]]),
                     reasons=reasons)


def answer(choice: int = 2, text: str = "blue", stamp_ns: int = STAMP, frames: list[int] = (3, 7, 12)) -> Answer:
    return Answer(stamp_ns=stamp_ns, question=QUESTION, answer=text, choice=choice, confidence=0.75,
                  spans_s=np.array([[0.3, 1.2]]), frame_indices=np.array(frames, np.int64))


def test_the_result_lists_frames_in_time_order_with_times_scores_and_reasons(report, tmp_path, capsys):
    harness = report()
    harness.send("scores", FrameScores(frame_indices=np.array([3, 12]), times_s=np.array([0.3, 1.2]),
                                       scores=np.array([0.25, 0.5], np.float32), query=QUESTION))
    harness.send("selection", selection([12, 3, 7], ["twelve", "three", "seven"]))
    assert not (tmp_path / "out" / "result.json").exists()  # waits for the answer
    harness.send("answer", answer())

    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert (result["question"], result["answer"], result["choice"], result["letter"]) == (QUESTION, "blue", 2, "C")
    assert result["confidence"] == 0.75 and result["spans_s"] == [[0.3, 1.2]] and result["answer_frames"] == [3, 7, 12]
    assert [f["frame"] for f in result["frames"]] == [3, 7, 12]
    assert [f["time_s"] for f in result["frames"]] == pytest.approx([0.3, 0.7, 1.2])
    assert [f["clip_score"] for f in result["frames"]] == [0.25, None, 0.5]
    assert [f["reason"] for f in result["frames"]] == ["three", "seven", "twelve"]
    assert result["selection_reasons"] == [] and result["contact_sheet"] == str(tmp_path / "out" / "sheet.png")
    assert harness.metrics["counters"] == {"reports": 1}


def test_answers_pair_with_the_selection_of_their_stamp(report, capsys):
    harness = report(out_json=None, contact_sheet=None)
    harness.send("answer", answer(choice=-1, text="", stamp_ns=7, frames=[5, 9]))
    harness.send("selection", selection([1, 2], ["other"], stamp_ns=8))
    assert harness.node.last_result is None
    harness.send("selection", selection([5, 9, 13], ["the spans are [0.5, 1.3]"], stamp_ns=7))
    result = harness.node.last_result
    assert [f["frame"] for f in result["frames"]] == [5, 9, 13] and all(f["reason"] is None for f in result["frames"])
    assert result["selection_reasons"] == ["the spans are [0.5, 1.3]"]  # not one per frame: kept with the selection
    assert (result["answer"], result["choice"], result["letter"]) == ("", -1, None)
    assert result["contact_sheet"] is None and harness.metrics["counters"] == {"reports": 1}
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def cell_centre(k: int, columns: int) -> tuple[int, int]:
    """The middle of thumbnail k's square on the sheet."""
    cell_w = THUMB + 2 * vr.PAD_PX
    cell_h = THUMB + 2 * vr.PAD_PX + vr.CAPTION_LINES * vr.LINE_PX
    title_h = vr.PAD_PX + vr.TITLE_LINES * vr.LINE_PX
    return (k % columns) * cell_w + vr.PAD_PX + THUMB // 2, title_h + (k // columns) * cell_h + vr.PAD_PX + THUMB // 2


def test_the_contact_sheet_has_one_thumbnail_per_selected_frame(report, tmp_path):
    frames = [6, 9, 12, 15, 18]
    harness = report(print_json=False)
    harness.send("selection", selection(frames, [f"r{f}" for f in frames]))
    harness.send("answer", answer(frames=frames))

    sheet = np.asarray(Image.open(tmp_path / "out" / "sheet.png").convert("RGB"))
    cell_w, cell_h = THUMB + 2 * vr.PAD_PX, THUMB + 2 * vr.PAD_PX + vr.CAPTION_LINES * vr.LINE_PX
    assert sheet.shape[1] == COLUMNS * cell_w  # 5 thumbnails, 4 to a row: 2 rows
    assert sheet.shape[0] == vr.PAD_PX + vr.TITLE_LINES * vr.LINE_PX + 2 * cell_h
    for k in range(2 * COLUMNS):
        x, y = cell_centre(k, COLUMNS)
        filled = tuple(sheet[y, x]) != vr.BACKGROUND
        assert filled == (k < len(frames)), f"cell {k}"
    x, y = cell_centre(2, COLUMNS)
    assert abs(int(sheet[y, x].mean()) - 12 * 8) <= 4  # the third thumbnail is frame 12 (grey 96)


def test_a_sheet_narrower_than_the_columns_and_captions_that_fit():
    images = [np.full((20, 40, 3), 200, np.uint8)] * 2  # wide frames keep their aspect ratio
    sheet = vr.draw_contact_sheet(images, [["t=0.0s  frame 0", "clip 0.100", "a reason far too long " * 10]] * 2,
                                  ["Q: what?", "A: B. that"], columns=COLUMNS, thumb_side=THUMB)
    assert sheet.width == 2 * (THUMB + 2 * vr.PAD_PX)
    assert vr.captions({"frame": 4, "time_s": 0.4, "clip_score": None, "reason": None}) == ["t=0.4s  frame 4", "", ""]
