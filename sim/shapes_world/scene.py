"""Scripted timelines: which coloured shape appears, moves, meets another and vanishes, and when.

Everything happens on the frame grid (time = frame / fps) and one action at a time, so events never
overlap and "before", "after" and "how many" have exact answers. Shapes never touch except in a
scripted meeting: every appearance and move keeps a clearance from every other visible shape, and a
meeting ends with the mover leaving (or vanishing). The first frame is always empty, so no answer
can be read off it. A seed fixes the whole script.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 190, 70), "blue": (50, 90, 240), "yellow": (245, 225, 40),
    "purple": (160, 70, 210), "orange": (250, 140, 20), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
BACKGROUND: tuple[int, int, int] = (28, 28, 28)

APPEAR, MOVE, MEET, VANISH = "appear", "move", "meet", "vanish"
EVENT_KINDS = (APPEAR, MOVE, MEET, VANISH)
PAST_TENSE = {APPEAR: "appeared", MOVE: "moved", MEET: "met", VANISH: "vanished"}

RADIUS_FRACTION = (0.07, 0.10)  # bounding radius as a fraction of the shorter frame side
MARGIN_PX = 2  # between a shape and the frame border
CLEARANCE_PX = 6  # between the bounding circles of shapes that are not meeting
MEET_OVERLAP = 0.8  # a meeting ends with the centres this fraction of the sum of radii apart
FIRST_ACTION_S = (0.5, 1.5)  # the first frame stays empty
GAP_S = (0.6, 2.0)  # quiet time between two actions
MOVE_S = (1.0, 3.0)
HOLD_S = (0.6, 1.5)  # how long a meeting lasts before the mover leaves
MIN_LIFE_S = 2.0  # a shape stays at least this long before it may vanish
PLACEMENT_TRIES = 40


@dataclass(frozen=True)
class SceneConfig:
    duration_s: float = 60.0
    fps: int = 10
    width: int = 224
    height: int = 224
    max_visible: int = 4
    n_kinds: int = 6  # distinct colour-shape pairs per video: few, so that shapes come back

    @property
    def n_frames(self) -> int:
        return int(round(self.duration_s * self.fps))


@dataclass
class Actor:
    """One appearance of a shape, from its first visible frame to the first frame without it."""

    id: int
    shape: str
    colour: str
    radius: int
    appear_frame: int
    vanish_frame: int | None = None  # None: visible to the end of the video
    keyframes: list[tuple[int, float, float]] = field(default_factory=list)  # (frame, x, y), linear between

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    def visible(self, frame: int) -> bool:
        return self.appear_frame <= frame and (self.vanish_frame is None or frame < self.vanish_frame)

    def positions(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre (x, y) in pixels at each of `frames` (held constant outside the keyframes)."""
        kf = np.asarray(self.keyframes, dtype=np.float64)
        return np.interp(frames, kf[:, 0], kf[:, 1]), np.interp(frames, kf[:, 0], kf[:, 2])


@dataclass
class Event:
    """An appearance or disappearance (start == end) or a move or meeting (start to arrival)."""

    kind: str
    start_frame: int
    end_frame: int
    actors: tuple[int, ...]  # the subject (the mover) first; a meeting names the one met second
    labels: tuple[str, ...]

    @property
    def description(self) -> str:
        if self.kind == MEET:
            return f"the {self.labels[0]} met the {self.labels[1]}"
        return f"the {self.labels[0]} {PAST_TENSE[self.kind]}"


@dataclass
class Scene:
    config: SceneConfig
    seed: int
    actors: list[Actor]
    events: list[Event]

    def seconds(self, frame: int) -> float:
        return frame / self.config.fps

    def to_json(self) -> dict[str, Any]:
        """The timeline for a sidecar: frames and seconds both, positions in pixels (x right, y down)."""
        actors = [{**asdict(a), "label": a.label, "appear_s": self.seconds(a.appear_frame),
                   "vanish_s": None if a.vanish_frame is None else self.seconds(a.vanish_frame)} for a in self.actors]
        events = [{"kind": e.kind, "start_frame": e.start_frame, "end_frame": e.end_frame,
                   "start_s": self.seconds(e.start_frame), "end_s": self.seconds(e.end_frame),
                   "actors": list(e.actors), "labels": list(e.labels), "description": e.description}
                  for e in self.events]
        return {"config": asdict(self.config), "seed": self.seed, "actors": actors, "events": events}


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Shortest distance from point p to the segment a-b."""
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


class _Director:
    """Writes one scene's script: a loop of actions, each chosen among those the stage allows."""

    def __init__(self, config: SceneConfig, seed: int):
        self.config = config
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        combos = [(c, s) for c in COLOURS for s in SHAPES]
        picks = self.rng.choice(len(combos), size=min(config.n_kinds, len(combos)), replace=False)
        self.kinds = [combos[i] for i in picks]
        side = min(config.width, config.height)
        self.radius_range = (max(4, int(side * RADIUS_FRACTION[0])), max(5, int(side * RADIUS_FRACTION[1])))
        self.actors: list[Actor] = []
        self.events: list[Event] = []
        self.alive: list[Actor] = []

    # ---- geometry -------------------------------------------------------------------------------

    def _frames(self, span_s: tuple[float, float]) -> int:
        return max(1, int(round(self.rng.uniform(*span_s) * self.config.fps)))

    def _pos(self, actor: Actor) -> np.ndarray:
        return np.array(actor.keyframes[-1][1:], dtype=np.float64)

    def _inside(self, p: np.ndarray, r: int) -> bool:
        lo = r + MARGIN_PX
        return lo <= p[0] <= self.config.width - 1 - lo and lo <= p[1] <= self.config.height - 1 - lo

    def _random_point(self, r: int) -> np.ndarray:
        lo = r + MARGIN_PX
        return np.array([self.rng.uniform(lo, self.config.width - 1 - lo), self.rng.uniform(lo, self.config.height - 1 - lo)])

    def _path_clear(self, mover: Actor | None, r: int, a: np.ndarray, b: np.ndarray, skip: tuple[Actor, ...] = ()) -> bool:
        """Does a shape of radius r going from a to b keep its clearance from every other visible shape?"""
        return all(_segment_distance(self._pos(o), a, b) >= r + o.radius + CLEARANCE_PX
                   for o in self.alive if o is not mover and o not in skip)

    # ---- actions ----------------------------------------------------------------------------------

    def appear(self, frame: int) -> bool:
        taken = {(a.colour, a.shape) for a in self.alive}
        free = [k for k in self.kinds if k not in taken]
        if not free:
            return False
        colour, shape = free[self.rng.integers(len(free))]
        r = int(self.rng.integers(self.radius_range[0], self.radius_range[1] + 1))
        for _ in range(PLACEMENT_TRIES):
            p = self._random_point(r)
            if self._path_clear(None, r, p, p):
                actor = Actor(len(self.actors), shape, colour, r, frame, keyframes=[(frame, float(p[0]), float(p[1]))])
                self.actors.append(actor)
                self.alive.append(actor)
                self.events.append(Event(APPEAR, frame, frame, (actor.id,), (actor.label,)))
                return True
        return False

    def vanish(self, frame: int, actor: Actor | None = None) -> bool:
        old_enough = [a for a in self.alive if frame - a.appear_frame >= MIN_LIFE_S * self.config.fps]
        if actor is None:
            if not old_enough:
                return False
            actor = old_enough[self.rng.integers(len(old_enough))]
        actor.vanish_frame = frame
        self.alive.remove(actor)
        self.events.append(Event(VANISH, frame, frame, (actor.id,), (actor.label,)))
        return True

    def _go(self, actor: Actor, start: int, end: int, target: np.ndarray) -> None:
        p = self._pos(actor)
        actor.keyframes += [(start, float(p[0]), float(p[1])), (end, float(target[0]), float(target[1]))]

    def move(self, frame: int, actor: Actor | None = None, leaving: Actor | None = None) -> int | None:
        """Move a shape to a free spot; `leaving` is a shape it touches and must go straight away from."""
        actor = actor or self.alive[self.rng.integers(len(self.alive))]
        end = frame + self._frames(MOVE_S)
        if end >= self.config.n_frames:
            return None
        start = self._pos(actor)
        skip = (leaving,) if leaving is not None else ()
        for _ in range(PLACEMENT_TRIES):
            target = self._random_point(actor.radius)
            if not self._path_clear(actor, actor.radius, start, target, skip):
                continue
            if leaving is not None:  # straight away from it: the distance only grows
                away = start - self._pos(leaving)
                far_enough = np.linalg.norm(target - self._pos(leaving)) >= actor.radius + leaving.radius + CLEARANCE_PX
                if np.dot(target - start, away) <= 0 or not far_enough:
                    continue
            self._go(actor, frame, end, target)
            self.events.append(Event(MOVE, frame, end, (actor.id,), (actor.label,)))
            return end
        return None

    def meet(self, frame: int) -> int | None:
        """One shape goes to touch another, stays a moment, then leaves (or vanishes if it cannot)."""
        i, j = self.rng.choice(len(self.alive), size=2, replace=False)
        mover, met = self.alive[i], self.alive[j]
        a, b = self._pos(mover), self._pos(met)
        reach = MEET_OVERLAP * (mover.radius + met.radius)
        towards = math.atan2(a[1] - b[1], a[0] - b[0])
        arrival = frame + self._frames(MOVE_S)
        if arrival >= self.config.n_frames:
            return None  # a meeting is only scripted if the video shows it
        for attempt in range(PLACEMENT_TRIES):
            angle = towards if attempt == 0 else self.rng.uniform(-math.pi, math.pi)
            target = b + reach * np.array([math.cos(angle), math.sin(angle)])
            if not self._inside(target, mover.radius) or not self._path_clear(mover, mover.radius, a, target, (met,)):
                continue
            if _segment_distance(b, a, target) < reach - 1e-6:
                continue  # it would pass through the shape it meets
            self._go(mover, frame, arrival, target)
            self.events.append(Event(MEET, frame, arrival, (mover.id, met.id), (mover.label, met.label)))
            leave = arrival + self._frames(HOLD_S)
            if leave >= self.config.n_frames:
                return leave
            end = self.move(leave, mover, leaving=met)
            if end is None:
                self.vanish(leave, mover)
                return leave
            return end
        return None

    # ---- the script -----------------------------------------------------------------------------

    def _choose(self) -> str:
        n = len(self.alive)
        weights = {APPEAR: (3.0 if n < 2 else 1.5) if n < self.config.max_visible else 0.0,
                   VANISH: (0.2 if n == 1 else 1.0) if n else 0.0,
                   MOVE: 1.0 if n else 0.0,
                   MEET: 1.5 if n >= 2 else 0.0}
        kinds = list(weights)
        p = np.array([weights[k] for k in kinds])
        return kinds[self.rng.choice(len(kinds), p=p / p.sum())]

    def run(self) -> Scene:
        total = self.config.n_frames
        frame = self._frames(FIRST_ACTION_S)
        while frame < total:
            kind = self._choose()
            if kind == APPEAR:
                done: int | None = frame if self.appear(frame) else None
            elif kind == VANISH:
                done = frame if self.vanish(frame) else None
            elif kind == MOVE:
                done = self.move(frame)
            else:
                done = self.meet(frame)
            frame = (done if done is not None else frame) + self._frames(GAP_S)
        return Scene(self.config, self.seed, self.actors, self.events)


def make_scene(config: SceneConfig, seed: int) -> Scene:
    """The scripted scene for `seed`: the same seed and config always give the same script."""
    if config.fps <= 0 or config.duration_s <= 0:
        raise ValueError(f"shapes world: fps and duration must be positive, got {config.fps} and {config.duration_s}")
    return _Director(config, seed).run()
