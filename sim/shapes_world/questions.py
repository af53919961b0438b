"""Multiple-choice questions about a scene, each with the spans of video where its answer is visible.

Every question has four options and one right answer taken from the script, never from a model, and
evidence spans (start_s, end_s) that contain the events deciding it; the first frame of every scene
is empty, so nothing can be answered from it. Questions that the script makes ambiguous (two shapes
appearing close together, a shape meeting several others) are not asked. Distractors come from the
same video where possible (other colours, shapes and events seen in it), as in VGrounding-QA.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sim.shapes_world.scene import APPEAR, COLOURS, MEET, MOVE, VANISH, Event, Scene

N_OPTIONS = 4
EVIDENCE_PAD_S = 1.0  # an instant is shown with this much video either side
UNIQUE_WINDOW_S = 5.0  # "appeared at about T" is only asked when nothing else appeared this close to T
QUESTION_STREAM = 7  # the questions' random stream, apart from the script's

APPEAR_COLOUR = "appear_colour"
MEET_PARTNER = "meet_partner"
COUNT_APPEAR = "count_appear"
NEXT_EVENT = "next_event"
FIRST_OF = "first_of"
VANISH_LAST = "vanish_last"
VANISH_FIRST = "vanish_first"
QUESTION_KINDS = (APPEAR_COLOUR, MEET_PARTNER, COUNT_APPEAR, NEXT_EVENT, FIRST_OF, VANISH_LAST, VANISH_FIRST)


@dataclass
class Question:
    id: str
    kind: str
    question: str
    options: list[str]
    answer: int  # index into options
    evidence: list[tuple[float, float]]  # spans in seconds where the answer is visible

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "answer_text": self.options[self.answer], "evidence": [list(s) for s in self.evidence]}


def a_or_an(label: str) -> str:
    return f"{'an' if label[0] in 'aeiou' else 'a'} {label}"


def clock(t_s: float) -> str:
    """m:ss, the way a person names a moment in a video."""
    seconds = int(round(t_s))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Asker:
    def __init__(self, scene: Scene):
        self.scene = scene
        self.rng = np.random.default_rng([scene.seed, QUESTION_STREAM])
        self.duration_s = scene.config.n_frames / scene.config.fps
        self.salient = [e for e in scene.events if e.kind != MOVE]  # moves are too alike to tell apart
        self.labels = sorted({label for e in scene.events for label in e.labels})

    def t(self, frame: int) -> float:
        return self.scene.seconds(frame)

    def span(self, event: Event) -> tuple[float, float]:
        """Where `event` is visible: an instant with some video either side, a meeting until a moment after."""
        lo = self.t(event.start_frame) - (EVIDENCE_PAD_S if event.start_frame == event.end_frame else 0.0)
        hi = self.t(event.end_frame) + EVIDENCE_PAD_S
        return round(max(0.0, lo), 3), round(min(self.duration_s, hi), 3)

    def options(self, answer: str, hard: list[str], easy: list[str]) -> tuple[list[str], int] | None:
        """The answer and three distractors (hard ones first), shuffled; None if there are too few."""
        chosen: list[str] = []
        for pool in (hard, easy):
            rest = [o for o in dict.fromkeys(pool) if o != answer and o not in chosen]
            take = min(N_OPTIONS - 1 - len(chosen), len(rest))
            chosen += [rest[i] for i in self.rng.permutation(len(rest))[:take]]
        if len(chosen) < N_OPTIONS - 1:
            return None
        order = self.rng.permutation(N_OPTIONS)
        options = [([answer] + chosen)[i] for i in order]
        return options, int(np.flatnonzero(order == 0)[0])

    def make(self, kind: str, text: str, answer: str, hard: list[str], easy: list[str],
             evidence: list[tuple[float, float]]) -> Question | None:
        built = self.options(answer, hard, easy)
        if built is None:
            return None
        options, index = built
        return Question("", kind, text, options, index, sorted(evidence))

    # ---- one method per question kind: every question of that kind the scene supports ----------

    def appear_colour(self) -> list[Question | None]:
        appears = [e for e in self.scene.events if e.kind == APPEAR]
        seen_colours = [label.split()[0] for label in self.labels]
        out = []
        for e in appears:
            t = self.t(e.start_frame)
            if any(o is not e and abs(self.t(o.start_frame) - t) < UNIQUE_WINDOW_S for o in appears):
                continue
            colour = e.labels[0].split()[0]
            out.append(self.make(APPEAR_COLOUR, f"What colour was the shape that appeared at about {clock(t)}?",
                                 colour, seen_colours, list(COLOURS), [self.span(e)]))
        return out

    def meet_partner(self) -> list[Question | None]:
        """Who met X: over the whole video when X only ever met one shape, else at one meeting ("at
        about T", the moment they touch) that no other meeting of X comes close to."""
        meetings: dict[str, list[tuple[Event, str]]] = defaultdict(list)  # label -> (meeting, the other)
        for e in self.scene.events:
            if e.kind == MEET:
                meetings[e.labels[0]].append((e, e.labels[1]))
                meetings[e.labels[1]].append((e, e.labels[0]))
        window = UNIQUE_WINDOW_S * self.scene.config.fps
        out = []
        for label, met in sorted(meetings.items()):
            partners = {other for _, other in met}
            if len(partners) == 1:
                asks = [("", met[0][1], [e for e, _ in met])]
            else:
                asks = [(f" at about {clock(self.t(e.end_frame))}", other, [e]) for e, other in met
                        if not any(o is not e and abs(o.end_frame - e.end_frame) < window for o, _ in met)]
            for when, answer, events in asks:
                colour, shape = answer.split()
                strangers = [o for o in self.labels if o != label]
                hard = [o for o in strangers if o.split()[0] == colour or o.split()[1] == shape]
                out.append(self.make(MEET_PARTNER, f"Which shape met the {label}{when}?", answer, hard, strangers,
                                     [self.span(e) for e in events]))
        return out

    def count_appear(self) -> list[Question | None]:
        appears: dict[str, list[Event]] = defaultdict(list)
        for e in self.scene.events:
            if e.kind == APPEAR:
                appears[e.labels[0]].append(e)
        out = []
        for label, events in sorted(appears.items()):
            n = len(events)
            near = [str(k) for k in range(max(0, n - 2), n + 4) if k != n]
            out.append(self.make(COUNT_APPEAR, f"How many times did {a_or_an(label)} appear?", str(n), near, [],
                                 [self.span(e) for e in events]))
        return out

    def next_event(self) -> list[Question | None]:
        out = []
        for ref, nxt in zip(self.salient, self.salient[1:]):
            twins = [e for e in self.salient if e is not ref and e.description == ref.description]
            if any(abs(e.start_frame - ref.start_frame) < UNIQUE_WINDOW_S * self.scene.config.fps for e in twins):
                continue  # "at about T" would not tell them apart
            after = f" at about {clock(self.t(ref.start_frame))}" if twins else ""
            later = [e.description for e in self.salient if e.start_frame > nxt.start_frame]
            others = [e.description for e in self.salient]
            out.append(self.make(NEXT_EVENT, f"Which of these happened next, after {ref.description}{after}?",
                                 nxt.description, later, others, [(self.span(ref)[0], self.span(nxt)[1])]))
        return out

    def first_of(self) -> list[Question | None]:
        firsts: dict[str, Event] = {}
        for e in self.salient:
            firsts.setdefault(e.description, e)
        candidates = list(firsts.values())
        out = []
        for _ in range(len(candidates) // N_OPTIONS):
            picks = [candidates[i] for i in sorted(self.rng.choice(len(candidates), N_OPTIONS, replace=False))]
            answer, rest = picks[0], picks[1:]
            out.append(self.make(FIRST_OF, "Which of these happened first?", answer.description,
                                 [e.description for e in rest], [], [self.span(e) for e in picks]))
        return out

    def vanish_order(self, kind: str, pick: Callable[[list[Event]], Event], word: str) -> list[Question | None]:
        vanishes = [e for e in self.scene.events if e.kind == VANISH]
        if not vanishes:
            return []
        decisive = pick(vanishes)
        others = [e.labels[0] for e in vanishes]
        return [self.make(kind, f"Which shape vanished {word}?", decisive.labels[0], others, self.labels,
                          [self.span(decisive)])]


def make_questions(scene: Scene, per_kind: int = 3) -> list[Question]:
    """Up to `per_kind` questions of each kind, chosen by the scene's seed; ids are `<kind>-<k>`."""
    asker = _Asker(scene)
    candidates = {
        APPEAR_COLOUR: asker.appear_colour(),
        MEET_PARTNER: asker.meet_partner(),
        COUNT_APPEAR: asker.count_appear(),
        NEXT_EVENT: asker.next_event(),
        FIRST_OF: asker.first_of(),
        VANISH_LAST: asker.vanish_order(VANISH_LAST, lambda v: v[-1], "last"),
        VANISH_FIRST: asker.vanish_order(VANISH_FIRST, lambda v: v[0], "first"),
    }
    questions: list[Question] = []
    for kind in QUESTION_KINDS:
        valid = [q for q in candidates[kind] if q is not None]
        for k, i in enumerate(sorted(asker.rng.permutation(len(valid))[:per_kind])):
            valid[i].id = f"{kind}-{k}"
            questions.append(valid[i])
    return questions
