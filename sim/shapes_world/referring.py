"""Referring segmentation on shapes-world stills: an image, an expression, and the mask it refers to.

A scene is 2–6 coloured shapes drawn with the video renderer's sprites and palette, never touching, so
every instance mask is exact and disjoint. Expressions come from templates over a structured `Query`,
and `select` decides what a query refers to from the geometry alone:
- attribute: "the red circle" (exactly one red circle in the scene);
- relation: "the red circle left of the blue square" (the anchor is unique, exactly one candidate is
  entirely on that side of it and every other candidate is clearly on the other side);
- multi: "all triangles", "all red shapes", "all red triangles" (two or more);
- empty: a colour and shape the scene never shows together ("the purple star" when there is none:
  both may be there on other shapes, or either may be missing), "all crosses" with no cross, or a
  relation that no candidate satisfies — the target mask is all False (UGround's [REJ]).
A query the geometry leaves unclear (two red circles for "the red circle", a candidate half beside the
anchor) is never asked. A seed fixes the scene and its expressions; splits are by seed with the video
set's rule (every fifth seed is held out), so a held-out still is never a training still.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.shapes_world.dataset import ALL, seeds_for, split_of
from sim.shapes_world.render import sprite
from sim.shapes_world.scene import BACKGROUND, COLOURS, SHAPES

THE, ALL_OF = "the", "all"
LEFT_OF, RIGHT_OF, ABOVE, BELOW = "left of", "right of", "above", "below"
RELATIONS = (LEFT_OF, RIGHT_OF, ABOVE, BELOW)
ATTRIBUTE, RELATION, MULTI, EMPTY = "attribute", "relation", "multi", "empty"
EXPRESSION_KINDS = (ATTRIBUTE, RELATION, MULTI, EMPTY)
PLURALS = {"cross": "crosses"}  # every other shape takes an "s"

DEFAULT_SIZE = 128
SHAPES_PER_SCENE = (2, 6)  # inclusive
PALETTE_SIZE = (2, 3)  # colours, and shapes, a scene draws from: few, so that some repeat
RADIUS_FRACTION = (0.08, 0.13)  # bounding radius as a fraction of the image side
MARGIN_PX = 2  # between a shape and the image border
CLEARANCE_PX = 4  # between the bounding circles of two shapes
PLACEMENT_TRIES = 60
EXPRESSION_STREAM = 11  # the expressions' random stream, apart from the scene's
DEFAULT_PER_KIND = 2
INDEX_NAME = "index.json"
SCHEMA = "groundloop.shapes_referring.v1"


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


@dataclass(frozen=True)
class Placed:
    """One shape of a still: its bounding circle (centre x right, y down, in pixels) and looks."""

    colour: str
    shape: str
    radius: int
    x: int
    y: int

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Query:
    """A referring expression as data: the attributes it names, its quantifier and an optional relation."""

    colour: str | None
    shape: str | None
    quantifier: str = THE
    relation: str | None = None
    anchor: tuple[str, str] | None = None  # (colour, shape) of the shape the relation is to

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "anchor": list(self.anchor) if self.anchor else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Query":
        return cls(**{**data, "anchor": tuple(data["anchor"]) if data.get("anchor") else None})

    def text(self) -> str:
        if self.quantifier == ALL_OF:
            noun = plural(self.shape) if self.shape else "shapes"
            return " ".join(w for w in (ALL_OF, self.colour, noun) if w)
        words = f"the {self.colour} {self.shape}"
        if self.relation is None or self.anchor is None:
            return words
        return f"{words} {self.relation} the {self.anchor[0]} {self.anchor[1]}"


def _matches(shapes: list[Placed], colour: str | None, shape: str | None) -> list[int]:
    return [i for i, s in enumerate(shapes) if colour in (None, s.colour) and shape in (None, s.shape)]


def _beside(a: Placed, b: Placed, relation: str) -> bool:
    """Is `a` entirely on that side of `b` (bounding circles, image axes: y grows downwards)?"""
    if relation == LEFT_OF:
        return a.x + a.radius < b.x - b.radius
    if relation == RIGHT_OF:
        return a.x - a.radius > b.x + b.radius
    if relation == ABOVE:
        return a.y + a.radius < b.y - b.radius
    if relation == BELOW:
        return a.y - a.radius > b.y + b.radius
    raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)}")


def _opposite(a: Placed, b: Placed, relation: str) -> bool:
    """Is `a`'s centre level with or beyond `b`'s on the other side: clearly not `relation`?"""
    return {LEFT_OF: a.x >= b.x, RIGHT_OF: a.x <= b.x, ABOVE: a.y >= b.y, BELOW: a.y <= b.y}[relation]


def select(query: Query, shapes: list[Placed]) -> tuple[int, ...] | None:
    """The indices of the shapes `query` refers to (() for none), or None when the scene leaves it unclear."""
    candidates = _matches(shapes, query.colour, query.shape)
    if query.quantifier == ALL_OF:
        return tuple(candidates)
    if query.relation is None or query.anchor is None:
        return tuple(candidates) if len(candidates) <= 1 else None
    anchors = _matches(shapes, *query.anchor)
    if len(anchors) > 1:
        return None
    if not anchors:
        return ()
    anchor = shapes[anchors[0]]
    candidates = [i for i in candidates if i != anchors[0]]
    beside = [i for i in candidates if _beside(shapes[i], anchor, query.relation)]
    unclear = [i for i in candidates if i not in beside and not _opposite(shapes[i], anchor, query.relation)]
    return tuple(beside) if len(beside) <= 1 and not unclear else None


def kind_of(query: Query, targets: tuple[int, ...]) -> str:
    if not targets:
        return EMPTY
    if query.quantifier == ALL_OF:
        return MULTI
    return RELATION if query.relation is not None else ATTRIBUTE


@dataclass(frozen=True)
class Expression:
    text: str
    kind: str
    targets: tuple[int, ...]  # indices into the scene's shapes; () for an empty target
    query: Query

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "kind": self.kind, "targets": list(self.targets), "query": self.query.to_json()}


@dataclass
class ReferringScene:
    """A still and its shapes; the image and the instance masks are drawn from the shapes."""

    seed: int
    size: int
    shapes: list[Placed]

    @property
    def split(self) -> str:
        return split_of(self.seed)

    def instance_masks(self) -> np.ndarray:
        """(N, H, W) bool, one per shape, disjoint."""
        masks = np.zeros((len(self.shapes), self.size, self.size), dtype=bool)
        for mask, s in zip(masks, self.shapes):
            r = s.radius
            mask[s.y - r: s.y + r + 1, s.x - r: s.x + r + 1] = sprite(s.shape, r)
        return masks

    def image(self) -> np.ndarray:
        """(H, W, 3) uint8: hard-edged, so each shape's pixels have exactly its palette colour."""
        image = np.empty((self.size, self.size, 3), dtype=np.uint8)
        image[:] = BACKGROUND
        for mask, s in zip(self.instance_masks(), self.shapes):
            image[mask] = COLOURS[s.colour]
        return image

    def target_mask(self, targets: tuple[int, ...]) -> np.ndarray:
        """(H, W) bool: the union of the targets' masks; all False for an empty target."""
        masks = self.instance_masks()
        return masks[list(targets)].any(axis=0) if targets else np.zeros((self.size, self.size), dtype=bool)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "split": self.split, "size": self.size, "shapes": [asdict(s) for s in self.shapes]}


def _palette(rng: np.random.Generator, names: list[str]) -> list[str]:
    size = int(rng.integers(PALETTE_SIZE[0], PALETTE_SIZE[1] + 1))
    return [names[i] for i in rng.choice(len(names), size=size, replace=False)]


def make_scene(seed: int, size: int = DEFAULT_SIZE) -> ReferringScene:
    """The still for `seed`: 2–6 shapes from a small per-scene palette, bounding circles kept apart."""
    rng = np.random.default_rng(seed)
    colours, kinds = _palette(rng, list(COLOURS)), _palette(rng, list(SHAPES))
    r_lo, r_hi = max(4, int(size * RADIUS_FRACTION[0])), max(5, int(size * RADIUS_FRACTION[1]))
    shapes: list[Placed] = []
    for _ in range(int(rng.integers(SHAPES_PER_SCENE[0], SHAPES_PER_SCENE[1] + 1))):
        colour, shape = colours[rng.integers(len(colours))], kinds[rng.integers(len(kinds))]
        r = int(rng.integers(r_lo, r_hi + 1))
        lo, hi = r + MARGIN_PX, size - 1 - r - MARGIN_PX
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            if all(np.hypot(x - o.x, y - o.y) >= r + o.radius + CLEARANCE_PX for o in shapes):
                shapes.append(Placed(colour, shape, r, x, y))
                break
    if len(shapes) < SHAPES_PER_SCENE[0]:
        raise RuntimeError(f"referring scene {seed}: placed only {len(shapes)} shapes at {size} px; use a larger size")
    return ReferringScene(seed, size, shapes)


def _candidate_queries(scene: ReferringScene, rng: np.random.Generator) -> list[Query]:
    """Every query the templates can form over the scene's colours and shapes, and a few with a colour
    or shape it lacks (chosen at random, so that no colour is the usual absent one)."""
    colours = sorted({s.colour for s in scene.shapes})
    shapes = sorted({s.shape for s in scene.shapes})
    missing_colours = [str(c) for c in rng.permutation([c for c in COLOURS if c not in colours])]
    missing_shapes = [str(s) for s in rng.permutation([s for s in SHAPES if s not in shapes])]
    pairs = [(c, s) for c in colours for s in shapes]  # some never together: "the blue triangle" with neither
    absent = [(c, shapes[rng.integers(len(shapes))]) for c in missing_colours[:2]]
    absent += [(colours[rng.integers(len(colours))], s) for s in missing_shapes[:1]]
    absent += [(c, s) for c, s in zip(missing_colours[:1], missing_shapes[:1])]
    queries = [Query(c, s) for c, s in pairs + absent]
    queries += [Query(None, s, ALL_OF) for s in shapes + missing_shapes[:1]]
    queries += [Query(c, None, ALL_OF) for c in colours + missing_colours[:1]]
    queries += [Query(c, s, ALL_OF) for c, s in pairs]
    queries += [Query(c, s, THE, rel, anchor) for c, s in pairs for anchor in pairs if anchor != (c, s) for rel in RELATIONS]
    return queries


def _form(expression: Expression, shapes: list[Placed]) -> str:
    """The template an expression was made with, so that each kind mixes its templates."""
    query = expression.query
    if query.relation is not None:
        needed = bool(expression.targets) and len(_matches(shapes, query.colour, query.shape)) > 1
        return "relation-needed" if needed else "relation"
    named = "-".join(a for a, v in (("colour", query.colour), ("shape", query.shape)) if v)
    return f"{query.quantifier}-{named}"


def _pick(pool: list[Expression], n: int, shapes: list[Placed], rng: np.random.Generator) -> list[Expression]:
    """`n` of `pool`, taking its templates in turn (templates and expressions in a random order); a
    needed relation (its target's colour and shape appear more than once) comes before one that only
    adds words."""
    forms: dict[str, list[Expression]] = {}
    for i in rng.permutation(len(pool)):
        forms.setdefault(_form(pool[i], shapes), []).append(pool[i])
    queues = sorted(forms.items(), key=lambda item: item[0] != "relation-needed")  # stable: else random
    picked: list[Expression] = []
    while len(picked) < n and any(q for _, q in queues):
        for _, queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def make_expressions(scene: ReferringScene, per_kind: int = DEFAULT_PER_KIND) -> list[Expression]:
    """Up to `per_kind` expressions of each kind, chosen by the scene's seed; the same text is never
    asked twice about one scene."""
    rng = np.random.default_rng([scene.seed, EXPRESSION_STREAM])
    pools: dict[str, list[Expression]] = {kind: [] for kind in EXPRESSION_KINDS}
    seen: set[str] = set()
    for query in _candidate_queries(scene, rng):
        targets = select(query, scene.shapes)
        text = query.text()
        if targets is None or (query.quantifier == ALL_OF and len(targets) == 1) or text in seen:
            continue  # unclear, or "all" of one: neither a single nor a multi target
        seen.add(text)
        kind = kind_of(query, targets)
        pools[kind].append(Expression(text, kind, targets, query))
    return [e for kind in EXPRESSION_KINDS for e in _pick(pools[kind], per_kind, scene.shapes, rng)]


# ---- on disk ------------------------------------------------------------------------------------


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def stem(seed: int) -> str:
    return f"referring_{seed:06d}"


def write_referring_set(out: str | Path, n: int, *, size: int = DEFAULT_SIZE, seed_start: int = 0,
                        split: str = ALL, per_kind: int = DEFAULT_PER_KIND) -> dict[str, Any]:
    """`n` stills of `split` from `seed_start` on: `DIR/referring_<seed>.npz` (image (H, W, 3) uint8,
    instance_masks (N, H, W) bool) and `DIR/index.json` (shapes and expressions, targets as indices
    into the instance masks). Files are renamed into place whole. The index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds_for(split, n, seed_start):
        scene = make_scene(seed, size)
        name = stem(seed) + ".npz"

        def save(path: Path, scene: ReferringScene = scene) -> None:
            with open(path, "wb") as f:
                np.savez_compressed(f, image=scene.image(), instance_masks=scene.instance_masks())

        _write_atomic(out / name, save)
        expressions = [e.to_json() for e in make_expressions(scene, per_kind)]
        entries.append({**scene.to_json(), "file": name, "expressions": expressions})
    index = {"schema": SCHEMA, "size": size, "per_kind": per_kind, "scenes": entries}
    _write_atomic(out / INDEX_NAME, lambda path: path.write_text(json.dumps(index, indent=1)))
    return index
