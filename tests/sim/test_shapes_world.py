"""The shapes-world benchmark: scripts fixed by their seed, sidecars that agree with the pixels of the
rendered video, questions whose answers follow from the timeline, disjoint splits, a resumable CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nodes.video_decode import iter_frames
from sim import cli
from sim.shapes_world.dataset import (ALL, HELDOUT, INDEX_NAME, TRAIN, generate_video, seeds_for, split_of, stem)
from sim.shapes_world.questions import (APPEAR_COLOUR, COUNT_APPEAR, FIRST_OF, MEET_PARTNER, N_OPTIONS, NEXT_EVENT,
                                        QUESTION_KINDS, VANISH_FIRST, VANISH_LAST, make_questions)
from sim.shapes_world.render import SceneRenderer, sprite
from sim.shapes_world.scene import APPEAR, BACKGROUND, COLOURS, MEET, MOVE, SHAPES, VANISH, SceneConfig, make_scene

SMALL = SceneConfig(duration_s=20.0, fps=10, width=128, height=128)
PALETTE = {"background": BACKGROUND, **COLOURS}


def colour_name(rgb: np.ndarray) -> str:
    """The palette entry nearest a decoded pixel."""
    names = list(PALETTE)
    distances = [np.abs(np.asarray(PALETTE[n], float) - rgb).sum() for n in names]
    return names[int(np.argmin(distances))]


def test_a_seed_fixes_the_script_and_the_pixels() -> None:
    one, again, other = make_scene(SMALL, 3), make_scene(SMALL, 3), make_scene(SMALL, 4)
    assert one.to_json() == again.to_json() != other.to_json()
    assert np.array_equal(SceneRenderer(one).frames(0, 200), SceneRenderer(again).frames(0, 200))
    questions = [q.to_json() for q in make_questions(one)]
    assert questions == [q.to_json() for q in make_questions(again)]


def test_every_shape_fits_its_bounding_radius() -> None:
    for shape in SHAPES:
        mask = sprite(shape, 10)
        y, x = np.nonzero(mask)
        assert mask[10, 10] and np.hypot(x - 10, y - 10).max() <= 10


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[int, np.ndarray]]:
    """A 20-second scene written like the CLI does, and its decoded frames by index."""
    out = tmp_path_factory.mktemp("shapes")
    sidecar = generate_video(out, 5, SMALL)
    frames = {i: image for i, _, image in iter_frames(str(out / sidecar["video"]))}
    return sidecar, frames


def position(actor: dict, frame: int) -> tuple[int, int]:
    kf = np.asarray(actor["keyframes"], float)
    return int(np.rint(np.interp(frame, kf[:, 0], kf[:, 1]))), int(np.rint(np.interp(frame, kf[:, 0], kf[:, 2])))


def test_the_sidecar_matches_the_pixels_of_the_video(rendered) -> None:
    sidecar, frames = rendered
    assert len(frames) == sidecar["n_frames"] == 200
    assert {colour_name(p) for p in frames[0].reshape(-1, 3)[::17]} == {"background"}  # the first frame tells nothing
    actors = {a["id"]: a for a in sidecar["actors"]}
    checked = 0
    for event in sidecar["events"]:
        for actor_id in event["actors"]:
            actor = actors[actor_id]
            if event["kind"] == APPEAR:  # absent on the frame before, there on its own frame
                before, at = event["start_frame"] - 1, event["start_frame"]
            elif event["kind"] == VANISH:
                before, at = event["start_frame"], event["start_frame"] - 1
            else:  # a move or a meeting: there where the sidecar says, at the start and on arrival
                before, at = None, event["end_frame"]
                x, y = position(actor, event["start_frame"])
                assert colour_name(frames[event["start_frame"]][y, x]) == actor["colour"]
            x, y = position(actor, at)
            assert colour_name(frames[at][y, x]) == actor["colour"], (event, actor)
            if before is not None:
                assert colour_name(frames[before][y, x]) == "background", (event, actor)
            checked += 1
    assert checked >= 6 and {e["kind"] for e in sidecar["events"]} >= {APPEAR, MOVE, MEET}


def test_shapes_touch_only_in_scripted_meetings() -> None:
    scene = make_scene(SceneConfig(duration_s=180.0), seed=11)
    met = {frozenset(e.actors) for e in scene.events if e.kind == MEET}
    frames = np.arange(scene.config.n_frames)
    tracks = {}
    for a in scene.actors:
        xs, ys = a.positions(frames)
        alive = (frames >= a.appear_frame) & (frames < (a.vanish_frame or len(frames)))
        tracks[a.id] = (xs, ys, alive, a.radius)
    for i, (xi, yi, ai, ri) in tracks.items():
        for j, (xj, yj, aj, rj) in tracks.items():
            if i < j:
                touching = ai & aj & (np.hypot(xi - xj, yi - yj) < ri + rj)
                assert not touching.any() or frozenset((i, j)) in met, (i, j, np.flatnonzero(touching)[:5])
    for e in scene.events:
        if e.kind == MEET:
            (a, b) = (tracks[k] for k in e.actors)
            f = e.end_frame
            assert np.hypot(a[0][f] - b[0][f], a[1][f] - b[1][f]) < a[3] + b[3]


def check_answer(question: dict, events: list[dict]) -> str:
    """The right answer, worked out again from the timeline alone."""
    salient = [e for e in events if e["kind"] != MOVE]
    text = question["question"]
    kind = question["kind"]
    if kind == APPEAR_COLOUR:
        m, s = map(int, re.search(r"(\d+):(\d\d)\?$", text).groups())
        (hit,) = [e for e in events if e["kind"] == APPEAR and abs(e["start_s"] - (60 * m + s)) <= 0.5]
        return hit["labels"][0].split()[0]
    if kind == MEET_PARTNER:
        label, _, clock = re.search(r"met the (.+?)( at about (\d+:\d\d))?\?$", text).groups()
        meetings = [e for e in events if e["kind"] == MEET and label in e["labels"]]
        if clock:
            m, s = map(int, clock.split(":"))
            meetings = [e for e in meetings if abs(e["end_s"] - (60 * m + s)) <= 0.5]
            assert len(meetings) == 1
        (partner,) = {other for e in meetings for other in e["labels"] if other != label}
        return partner
    if kind == COUNT_APPEAR:
        label = re.search(r"did an? (.+) appear\?$", text).group(1)
        return str(sum(e["kind"] == APPEAR and e["labels"][0] == label for e in events))
    if kind == NEXT_EVENT:
        ref, _, clock = re.search(r"after (.+?)( at about (\d+:\d\d))?\?$", text).groups()
        matches = [k for k, e in enumerate(salient) if e["description"] == ref]
        if clock:
            m, s = map(int, clock.split(":"))
            matches = [k for k in matches if abs(salient[k]["start_s"] - (60 * m + s)) <= 0.5]
        (k,) = matches
        return salient[k + 1]["description"]
    if kind == FIRST_OF:
        first = {}
        for e in salient:
            first.setdefault(e["description"], e["start_s"])
        return min(question["options"], key=lambda o: first[o])
    vanishes = [e["labels"][0] for e in events if e["kind"] == VANISH]
    return vanishes[-1] if kind == VANISH_LAST else vanishes[0]


@pytest.mark.parametrize("seed", range(4))
def test_every_answer_follows_from_the_timeline(seed: int) -> None:
    scene = make_scene(SceneConfig(duration_s=150.0), seed)
    timeline = scene.to_json()
    questions = [q.to_json() for q in make_questions(scene, per_kind=5)]
    assert {q["kind"] for q in questions} == set(QUESTION_KINDS)
    for q in questions:
        assert len(set(q["options"])) == N_OPTIONS and 0 <= q["answer"] < N_OPTIONS
        assert q["options"][q["answer"]] == q["answer_text"] == check_answer(q, timeline["events"]), q
        assert q["evidence"] and all(0 <= lo < hi <= 150.0 for lo, hi in q["evidence"])
        assert all(hi > 0.5 for _, hi in q["evidence"])  # the evidence is never the (empty) first frame


def test_evidence_spans_hold_the_deciding_events() -> None:
    scene = make_scene(SceneConfig(duration_s=150.0), 1)
    events = scene.to_json()["events"]
    for q in (q.to_json() for q in make_questions(scene)):
        if q["kind"] in (APPEAR_COLOUR, VANISH_LAST, VANISH_FIRST):
            kind = APPEAR if q["kind"] == APPEAR_COLOUR else VANISH
            times = [e["start_s"] for e in events if e["kind"] == kind and q["answer_text"] in e["labels"][0]]
            (lo, hi), = q["evidence"]
            assert any(lo < t < hi for t in times)


def test_the_splits_are_disjoint_and_fixed_by_seed() -> None:
    train, heldout = seeds_for(TRAIN, 40), seeds_for(HELDOUT, 10)
    assert not set(train) & set(heldout) and len(set(train)) == 40 and len(set(heldout)) == 10
    assert all(split_of(s) == TRAIN for s in train) and all(split_of(s) == HELDOUT for s in heldout)
    assert seeds_for(ALL, 5, start=7) == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="unknown split"):
        seeds_for("test", 1)


def run_cli(out: Path, n: int, minutes: float = 0.1) -> None:
    assert cli.main(["shapes-video", "--out", str(out), "-n", str(n), "--minutes", str(minutes), "--seed", "3",
                     "--size", "64", "--no-progress"]) == 0


def test_the_cli_resumes_skipping_finished_videos(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(tmp_path, 2)
    videos = [tmp_path / (stem(s) + ".mp4") for s in (3, 4)]
    stamps = [v.stat().st_mtime_ns for v in videos]
    (tmp_path / (stem(4) + ".json")).unlink()  # as if interrupted between the video and its sidecar
    capsys.readouterr()
    run_cli(tmp_path, 3)
    assert "2 written, 1 already there" in capsys.readouterr().out
    assert videos[0].stat().st_mtime_ns == stamps[0]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert [(v["seed"], v["split"]) for v in index["videos"]] == [(3, TRAIN), (4, HELDOUT), (5, TRAIN)]
    sidecar = json.loads((tmp_path / index["videos"][2]["sidecar"]).read_text())
    assert sidecar["n_frames"] == 60 and sidecar["width"] == 64
    run_cli(tmp_path, 1, minutes=0.2)  # other settings: made again
    assert "1 written, 0 already there" in capsys.readouterr().out
