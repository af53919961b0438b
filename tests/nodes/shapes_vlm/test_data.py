"""The training examples: the 1–5 relevance rule on a hand-made scene, answers in the format the nodes
parse, QA frames drawn from the evidence, one task per batch with answer-only labels."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.air.analysis import parse_judgement
from nodes.shapes_vlm.data import (CAPTION, CLUSTER_REACH_S, IGNORE_INDEX, QA, QA_CLUSTERS, QA_LAYOUTS, QA_LETTER,
                                   QA_RELEVANT, QA_SPANS, QA_UNIFORM, RELEVANCE, RELEVANT_LAYOUT_P, Encoder, SceneInfo,
                                   ShapesTasks, describe, relevance_scores)
from nodes.shapes_vlm.model import build_tokenizer
from nodes.video_qa import OPTION_LETTERS
from nodes.vlm.parsing import parse_choice
from sim.shapes_world.dataset import TRAIN
from sim.shapes_world.questions import APPEAR_COLOUR, MEET_PARTNER, Question
from sim.shapes_world.scene import APPEAR, MEET, VANISH, Actor, Event, Scene, SceneConfig
from tests.nodes.shapes_vlm.conftest import TINY_FRAME_PX, TINY_VLM

FPS = 10
OPTIONS_MET = ["green star", "blue square", "yellow cross", "cyan circle"]  # the blue square met the red circle
OPTIONS_COLOUR = ["green", "red", "blue", "yellow"]  # the red circle appeared at 2 s


def hand_made() -> SceneInfo:
    """10 s at 10 fps: a green star (0.5–1.5 s), a red circle (2–7 s) and a blue square (from 4 s), which
    meets the red circle at 5–6 s."""
    config = SceneConfig(duration_s=10.0, fps=FPS, width=64, height=64)
    actors = [Actor(0, "star", "green", 5, 5, 15, [(5, 10.0, 10.0)]),
              Actor(1, "circle", "red", 5, 20, 70, [(20, 30.0, 30.0)]),
              Actor(2, "square", "blue", 5, 40, None, [(40, 50.0, 50.0)])]
    events = [Event(APPEAR, 5, 5, (0,), ("green star",)), Event(VANISH, 15, 15, (0,), ("green star",)),
              Event(APPEAR, 20, 20, (1,), ("red circle",)), Event(APPEAR, 40, 40, (2,), ("blue square",)),
              Event(MEET, 50, 60, (2, 1), ("blue square", "red circle")), Event(VANISH, 70, 70, (1,), ("red circle",))]
    met = Question("q0", MEET_PARTNER, "Which shape met the red circle?", OPTIONS_MET, 1, [(5.0, 6.0), (6.5, 7.5)])
    colour = Question("q1", APPEAR_COLOUR, "What colour was the shape that appeared at about 0:02?", OPTIONS_COLOUR,
                      1, [(1.0, 3.0)])
    return SceneInfo(Scene(config, 0, actors, events), [met, colour])


@pytest.mark.parametrize("question, frame, score", [
    (0, 55, 5),  # 5.5 s: both met shapes in view during the meeting
    (0, 68, 5),  # 6.8 s: inside the second span, both still visible
    (0, 45, 4),  # 4.5 s: both visible, before the meeting
    (0, 72, 4),  # 7.2 s: in span, the red circle already gone
    (0, 30, 3),  # 3.0 s: the red circle alone, outside the spans
    (0, 10, 2),  # 1.0 s: the green star, an option but not the answer
    (0, 0, 1),  # an empty frame
    (1, 25, 5),  # 2.5 s: the red circle just appeared
    (1, 15, 3),  # 1.5 s: the moment just before it appeared, nothing in view
    (1, 50, 4),  # 5.0 s: the red circle (and the blue square) long after it appeared
    (1, 80, 2),  # 8.0 s: only the blue square, whose colour is an option
    (1, 0, 1),
])
def test_the_relevance_rule(question: int, frame: int, score: int) -> None:
    info = hand_made()
    scores = relevance_scores(info.scene, info.questions[question], info.labels, info.visible)
    assert scores.shape == (info.scene.config.n_frames,) and scores[frame] == score


def test_answers_are_in_the_format_the_nodes_parse() -> None:
    tokenizer = build_tokenizer(TINY_VLM.max_positions)
    tasks = ShapesTasks(TRAIN, 6, frame_size=TINY_FRAME_PX)
    rng = np.random.default_rng(0)
    for _ in range(5):
        example = tasks.relevance(rng)
        decoded = tokenizer.decode(tokenizer(example.target, add_special_tokens=False)["input_ids"])
        judgement = parse_judgement(decoded)
        assert judgement.score == example.truth and judgement.reason.startswith("it shows")
        answer = tasks.qa(rng)  # the right option's text, as the prompt lists it after its letter
        assert f"\n{OPTION_LETTERS[answer.truth]}. {answer.target}\n" in answer.prompt
        assert len(answer.images) == tasks.qa_frames
    assert describe({"blue square", "red circle"}) == "the red circle and the blue square"
    assert describe(set()) == "no shape"


def test_letter_targets_answer_with_the_right_options_letter() -> None:
    text, letter = (ShapesTasks(TRAIN, 6, frame_size=TINY_FRAME_PX, qa_target=target) for target in ("text", QA_LETTER))
    for seed in range(5):  # the same draws: only the answer's form differs
        by_text, by_letter = text.qa(np.random.default_rng(seed)), letter.qa(np.random.default_rng(seed))
        assert by_letter.prompt == by_text.prompt and by_letter.truth == by_text.truth
        assert by_letter.target == OPTION_LETTERS[by_letter.truth] and parse_choice(by_letter.target, 4) == by_letter.truth
    with pytest.raises(ValueError, match="qa_target"):
        ShapesTasks(TRAIN, 1, qa_target="index")


def test_relevance_examples_cover_every_score() -> None:
    tasks = ShapesTasks(TRAIN, 10, frame_size=TINY_FRAME_PX)
    rng = np.random.default_rng(1)
    seen = {tasks.relevance(rng).truth for _ in range(60)}
    assert seen == {1, 2, 3, 4, 5}


def test_qa_frames_show_the_evidence_and_are_in_time_order() -> None:
    info = hand_made()
    tasks = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX)
    frames = tasks.qa_frame_indices(info, info.questions[0], np.random.default_rng(0))
    scores = relevance_scores(info.scene, info.questions[0], info.labels, info.visible)
    assert frames == sorted(frames) and len(set(frames)) == tasks.qa_frames
    assert (scores[frames] == 5).sum() == 2  # one evidence frame per span, the rest outside the spans


def test_uniform_layout_spreads_the_frames_evenly_over_the_video() -> None:
    info = hand_made()
    tasks = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_frames=4)
    frames = tasks.qa_uniform_indices(info, np.random.default_rng(0))
    assert len(frames) == 4 and frames == sorted(frames)
    assert set(np.diff(frames).tolist()) <= {24, 25, 26}  # 100 frames / 4, whatever the phase
    assert frames[0] < 25


def test_cluster_layout_sees_every_span_and_stays_near_the_spans() -> None:
    info = hand_made()
    question = info.questions[0]  # spans 5–6 s and 6.5–7.5 s
    tasks = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_frames=6)
    for seed in range(5):
        times_s = np.array(tasks.qa_cluster_indices(info, question, np.random.default_rng(seed))) / FPS
        assert len(times_s) == 6 and (np.diff(times_s) > 0).all()
        for lo, hi in question.evidence:
            assert ((times_s >= lo) & (times_s <= hi)).any()
        assert times_s.min() >= 5.0 - CLUSTER_REACH_S and times_s.max() <= 7.5 + CLUSTER_REACH_S


def test_relevant_layout_draws_frames_by_their_relevance_score() -> None:
    info = hand_made()
    question = info.questions[0]  # every score 1-5 occurs among its frames
    scores = relevance_scores(info.scene, question, info.labels, info.visible)
    assert set(scores.tolist()) == set(RELEVANT_LAYOUT_P)
    tasks = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_frames=4)
    drawn = []
    for seed in range(300):
        frames = tasks.qa_relevant_indices(info, question, np.random.default_rng(seed))
        assert len(frames) == 4 and frames == sorted(frames) and len(set(frames)) == 4
        drawn += scores[frames].tolist()
    for score, chance in RELEVANT_LAYOUT_P.items():  # 1200 frames: each share within 0.04 of its chance
        assert abs(drawn.count(score) / len(drawn) - chance) < 0.04, (score, drawn.count(score) / len(drawn))
    most = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_frames=90)  # of 100: scores run out, drop out of the draw
    frames = most.qa_relevant_indices(info, question, np.random.default_rng(0))
    assert len(set(frames)) == 90 and set(scores[frames].tolist()) == set(RELEVANT_LAYOUT_P)


def test_qa_examples_draw_their_layout_from_the_given_ones() -> None:
    info = hand_made()
    question = info.questions[0]
    tasks = ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_frames=4, qa_layouts=QA_LAYOUTS)
    makers = {QA_SPANS: lambda rng: tasks.qa_frame_indices(info, question, rng),
              QA_UNIFORM: lambda rng: tasks.qa_uniform_indices(info, rng),
              QA_CLUSTERS: lambda rng: tasks.qa_cluster_indices(info, question, rng),
              QA_RELEVANT: lambda rng: tasks.qa_relevant_indices(info, question, rng)}
    drawn = set()
    for seed in range(20):
        replay = np.random.default_rng(seed)
        layout = QA_LAYOUTS[replay.integers(len(QA_LAYOUTS))]
        assert tasks.qa_frame_layout(info, question, np.random.default_rng(seed)) == makers[layout](replay)
        drawn.add(layout)
    assert drawn == set(QA_LAYOUTS)
    with pytest.raises(ValueError, match="qa_layouts"):
        ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_layouts=("spans", "everywhere"))
    with pytest.raises(ValueError, match="qa_layouts"):
        ShapesTasks(TRAIN, 1, frame_size=TINY_FRAME_PX, qa_layouts=())


def test_a_batch_holds_one_task_and_labels_only_the_answer(tiny_clip_dir) -> None:
    from nodes.clip.processing import ImagePreprocessor
    from nodes.shapes_vlm.config import image_tokens
    from nodes.shapes_vlm.model import build_vlm

    model, processor = build_vlm(tiny_clip_dir, TINY_VLM)
    encoder = Encoder(processor, image_tokens(model.config.vision_config), ImagePreprocessor.from_dir(tiny_clip_dir))
    tasks = ShapesTasks(TRAIN, 4, frame_size=TINY_FRAME_PX, qa_frames=3)
    rng = np.random.default_rng(2)
    examples = [tasks.qa(rng), tasks.qa(rng)]
    batch = encoder.batch(examples)
    assert batch.task == QA and batch.pixel_values.shape[0] == 6
    answers = [row[row != IGNORE_INDEX].tolist() for row in batch.labels]
    assert all(a[-1] == encoder.tokenizer.eos_token_id for a in answers)  # the option's text, then [EOS]
    assert [encoder.tokenizer.decode(a[:-1]) for a in answers] == [e.target for e in examples]
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert ((batch.input_ids == image_id).sum(1) == 3 * image_tokens(model.config.vision_config)).all()
    with pytest.raises(ValueError, match="one task"):
        encoder.batch([tasks.sample(CAPTION, rng), tasks.sample(RELEVANCE, rng)])


def test_scene_lengths_are_drawn_by_seed_from_the_given_set() -> None:
    tasks = ShapesTasks(TRAIN, 40, frame_size=TINY_FRAME_PX, scene_seconds=(60.0, 300.0))
    lengths = {seed: tasks.duration_s(seed) for seed in tasks.seeds}
    assert set(lengths.values()) == {60.0, 300.0}
    again = ShapesTasks(TRAIN, 40, frame_size=TINY_FRAME_PX, scene_seconds=(60.0, 300.0))
    assert all(again.duration_s(seed) == length for seed, length in lengths.items())
    long_seed = next(seed for seed, length in lengths.items() if length == 300.0)
    assert tasks.info(long_seed).scene.config.n_frames == 300 * tasks.config.fps
    with pytest.raises(ValueError, match="scene_seconds"):
        ShapesTasks(TRAIN, 4, frame_size=TINY_FRAME_PX, scene_seconds=())
