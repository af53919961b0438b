"""VideoReport: the end of an offline video QA graph. The answer, the frames it was read from (their
times, CLIP scores and the selector's reasons) and the evidence spans become one JSON object, printed
and written to a file, and the selected frames become a contact sheet (a PNG, time and score under each
thumbnail), so that a person can check the answer against the frames at a glance.

Inputs: `answer` (Answer) and `selection` (A.I.R.'s Selection or Video-in-the-Loop's `spans`), paired
by capture stamp: the answering nodes keep their selection's `stamp_ns`. The optional `scores` input
(the prescan's FrameScores) adds each frame's CLIP score. A selector that gives one reason per frame
(A.I.R.) has it shown with that frame; other reasons (ViTL's grounding answer) go with the selection.
Each pair makes one report, and a later one overwrites the files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nodes.video_qa import OPTION_LETTERS, VideoFrames, fetch_images
from pipeline.messages import Answer, FrameScores, Selection
from pipeline.node import Node

DEFAULT_OUT_JSON = "runs/video_qa/result.json"
DEFAULT_CONTACT_SHEET = "runs/video_qa/contact_sheet.png"
DEFAULT_THUMB_SIDE = 192
DEFAULT_COLUMNS = 4
MAX_PENDING = 16  # unpaired answers or selections kept; older ones are dropped (counted)
PAD_PX = 6
LINE_PX = 14
CAPTION_LINES = 3  # time and frame; CLIP score; reason
TITLE_LINES = 2  # question; answer
BACKGROUND = (60, 60, 66)  # lighter than a shapes-world frame, so thumbnails stand out
TEXT_COLOUR = (235, 235, 235)
MUTED_COLOUR = (165, 165, 165)
ELLIPSIS = "…"
NO_ANSWER = "(no valid answer)"

COUNTER_REPORTS = "reports"
COUNTER_UNPAIRED_DROPPED = "unpaired_dropped"
COUNTER_FRAME_ERRORS = "frame_errors"


class VideoReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video: str = Field(min_length=1, description="the local video file the frames are taken from")
    out_json: str | None = Field(DEFAULT_OUT_JSON, description="write the result here (None: do not write)")
    contact_sheet: str | None = Field(DEFAULT_CONTACT_SHEET, description="PNG of the selected frames (None: none)")
    print_json: bool = Field(True, description="also print the result as one JSON line on stdout")
    thumb_side: int = Field(DEFAULT_THUMB_SIDE, ge=32, description="longer side of each thumbnail, pixels")
    columns: int = Field(DEFAULT_COLUMNS, ge=1, description="thumbnails per row of the contact sheet")


def frame_records(selection: Selection, times_s: np.ndarray, clip_scores: dict[int, float]) -> list[dict[str, Any]]:
    """One record per selected frame in time order: index, time, CLIP score (None when not known) and
    reason (None unless the selector gave one per frame)."""
    frames = np.asarray(selection.frame_indices, np.int64).tolist()
    per_frame = len(selection.reasons) == len(frames)
    records = [{"frame": f, "time_s": float(times_s[f]) if 0 <= f < len(times_s) else None,
                "clip_score": clip_scores.get(f), "reason": selection.reasons[i] if per_frame else None}
               for i, f in enumerate(frames)]
    return sorted(records, key=lambda r: r["frame"])


def report_json(answer: Answer, selection: Selection, records: list[dict[str, Any]], video: str,
                contact_sheet: str | None) -> dict[str, Any]:
    """The result: the answer with its letter, the selected frames, the spans and where the sheet is."""
    per_frame = len(selection.reasons) == len(records)
    spans = answer.spans_s if answer.spans_s is not None else selection.spans_s
    return {
        "video": video, "question": answer.question, "answer": answer.answer, "choice": answer.choice,
        "letter": OPTION_LETTERS[answer.choice] if 0 <= answer.choice < len(OPTION_LETTERS) else None,
        "confidence": answer.confidence,
        "spans_s": np.asarray(spans, np.float64).reshape(-1, 2).tolist(),
        "frames": records,
        "answer_frames": [] if answer.frame_indices is None else np.asarray(answer.frame_indices).tolist(),
        "selection_reasons": [] if per_frame else list(selection.reasons),
        "contact_sheet": contact_sheet,
    }


def captions(record: dict[str, Any]) -> list[str]:
    """The lines under one thumbnail."""
    when = "t=?" if record["time_s"] is None else f"t={record['time_s']:.1f}s"
    score = "" if record["clip_score"] is None else f"clip {record['clip_score']:.3f}"
    return [f"{when}  frame {record['frame']}", score, record["reason"] or ""]


def fit_text(draw: Any, text: str, width: int, font: Any) -> str:
    """`text` cut (with an ellipsis) so that it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + ELLIPSIS, font=font) > width:
        text = text[:-1]
    return text + ELLIPSIS


def draw_contact_sheet(images: list[np.ndarray], lines: list[list[str]], title: list[str], *,
                       columns: int = DEFAULT_COLUMNS, thumb_side: int = DEFAULT_THUMB_SIDE) -> Any:
    """A grid of thumbnails (row-major, `columns` wide at most), each above its caption lines, under a
    title. Returns a PIL image; cells past the last thumbnail stay background."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    cell_w = thumb_side + 2 * PAD_PX
    cell_h = thumb_side + 2 * PAD_PX + CAPTION_LINES * LINE_PX
    title_h = PAD_PX + TITLE_LINES * LINE_PX
    sheet = Image.new("RGB", (columns * cell_w, title_h + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(title[:TITLE_LINES]):
        draw.text((PAD_PX, PAD_PX // 2 + i * LINE_PX), fit_text(draw, text, sheet.width - 2 * PAD_PX, font),
                  fill=TEXT_COLOUR, font=font)
    for k, (image, caption) in enumerate(zip(images, lines)):
        left, top = (k % columns) * cell_w + PAD_PX, title_h + (k // columns) * cell_h + PAD_PX
        thumb = Image.fromarray(np.asarray(image, np.uint8))
        thumb.thumbnail((thumb_side, thumb_side))  # keeps the aspect ratio
        sheet.paste(thumb, (left + (thumb_side - thumb.width) // 2, top + (thumb_side - thumb.height) // 2))
        for j, text in enumerate(caption[:CAPTION_LINES]):
            draw.text((left, top + thumb_side + PAD_PX // 2 + j * LINE_PX), fit_text(draw, text, thumb_side, font),
                      fill=TEXT_COLOUR if j == 0 else MUTED_COLOUR, font=font)
    return sheet


def _write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)


class VideoReport(Node):
    """A sink: Answer + Selection (+ FrameScores) → a printed and written JSON result and a contact sheet."""

    Params = VideoReportParams
    inputs = {"answer": Answer, "selection": Selection, "scores": FrameScores}

    def setup(self) -> None:
        self.frames = VideoFrames(self.params.video, self.params.thumb_side)
        self.answers: dict[int, Answer] = {}
        self.selections: dict[int, Selection] = {}
        self.clip_scores: dict[int, float] = {}
        self.last_result: dict[str, Any] | None = None

    def on_scores(self, msg: FrameScores) -> None:
        indices = np.asarray(msg.frame_indices, np.int64).tolist()
        self.clip_scores.update(zip(indices, np.asarray(msg.scores, np.float64).tolist()))

    def on_answer(self, msg: Answer) -> None:
        self._hold(self.answers, msg)
        self._pair(msg.stamp_ns)

    def on_selection(self, msg: Selection) -> None:
        self._hold(self.selections, msg)
        self._pair(msg.stamp_ns)

    def _hold(self, pending: dict[int, Any], msg: Answer | Selection) -> None:
        pending[msg.stamp_ns] = msg
        while len(pending) > MAX_PENDING:
            pending.pop(next(iter(pending)))  # the oldest
            self.count(COUNTER_UNPAIRED_DROPPED)

    def _pair(self, stamp_ns: int) -> None:
        if stamp_ns in self.answers and stamp_ns in self.selections:
            self.report(self.answers.pop(stamp_ns), self.selections.pop(stamp_ns))

    def report(self, answer: Answer, selection: Selection) -> dict[str, Any]:
        """Write (and print) the result of one answered selection; the result."""
        p = self.params
        records = frame_records(selection, self.frames.times_s, self.clip_scores)
        result = report_json(answer, selection, records, p.video, p.contact_sheet)
        if p.contact_sheet is not None:
            self._contact_sheet(answer, records, Path(p.contact_sheet))
        if p.out_json is not None:
            _write(Path(p.out_json), lambda path: path.write_text(json.dumps(result, indent=1)))
        if p.print_json:
            print(json.dumps(result), flush=True)
        self.count(COUNTER_REPORTS)
        self.last_result = result
        return result

    def _contact_sheet(self, answer: Answer, records: list[dict[str, Any]], path: Path) -> None:
        kept, images, failures = fetch_images(self.frames, [r["frame"] for r in records])
        for failure in failures:
            self.count(COUNTER_FRAME_ERRORS)
            self.log.error("frame left off the contact sheet: %s", failure)
        by_frame = {r["frame"]: r for r in records}
        letter = OPTION_LETTERS[answer.choice] + ". " if 0 <= answer.choice < len(OPTION_LETTERS) else ""
        title = [f"Q: {answer.question}", f"A: {letter}{answer.answer or NO_ANSWER} (confidence {answer.confidence:.2f})"]
        sheet = draw_contact_sheet(images, [captions(by_frame[f]) for f in kept], title, columns=self.params.columns,
                                   thumb_side=self.params.thumb_side)
        _write(path, sheet.save)
        self.log.info("contact sheet of %d frames: %s", len(kept), path)
