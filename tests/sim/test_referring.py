"""The referring-segmentation set: what an expression refers to follows from the geometry, masks are
the drawn shapes, unclear expressions are never asked, and splits follow the video set's seed rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.shapes_world.dataset import HELDOUT, TRAIN, split_of
from sim.shapes_world.referring import (
    ABOVE, ALL_OF, ATTRIBUTE, BELOW, EMPTY, EXPRESSION_KINDS, LEFT_OF, MULTI, RELATION, RIGHT_OF, Placed, Query,
    ReferringScene, make_expressions, make_scene, select, write_referring_set)
from sim.shapes_world.scene import BACKGROUND, COLOURS

SIZE = 96
#   red circle (20, 20)      blue square (70, 20)
#   red circle (20, 70)      green triangle (70, 70)      red triangle (46, 46) in the middle
SHAPES = [Placed("red", "circle", 8, 20, 20), Placed("blue", "square", 8, 70, 20), Placed("red", "circle", 8, 20, 70),
          Placed("green", "triangle", 8, 70, 70), Placed("red", "triangle", 8, 46, 46)]
SCENE = ReferringScene(seed=0, size=SIZE, shapes=SHAPES)


def the(colour: str, shape: str, relation: str | None = None, anchor: tuple[str, str] | None = None) -> Query:
    return Query(colour, shape, relation=relation, anchor=anchor)


@pytest.mark.parametrize("query, targets", [
    (the("blue", "square"), (1,)),
    (the("red", "triangle"), (4,)),
    (the("red", "circle"), None),  # two red circles: unclear without a relation
    (the("purple", "star"), ()),
    (the("blue", "triangle"), ()),  # blue and triangles are there, never together
    (the("red", "circle", ABOVE, ("green", "triangle")), (0,)),
    (the("red", "circle", BELOW, ("blue", "square")), (2,)),
    (the("red", "circle", LEFT_OF, ("blue", "square")), None),  # both red circles are left of it
    (the("red", "circle", RIGHT_OF, ("blue", "square")), ()),  # neither is
    (the("blue", "square", ABOVE, ("red", "circle")), None),  # two red circles: the anchor is unclear
    (the("blue", "square", ABOVE, ("purple", "star")), ()),  # no anchor: nothing to be above
    (the("red", "triangle", LEFT_OF, ("blue", "square")), (4,)),  # right edge 54 < the square's left edge 62
    (the("green", "triangle", BELOW, ("red", "triangle")), (3,)),  # top edge 62 > the red one's bottom 54
    (Query(None, "circle", ALL_OF), (0, 2)),
    (Query("red", None, ALL_OF), (0, 2, 4)),
    (Query("red", "circle", ALL_OF), (0, 2)),
    (Query(None, "cross", ALL_OF), ()),
])
def test_select_follows_the_geometry(query: Query, targets: tuple[int, ...] | None) -> None:
    assert select(query, SHAPES) == targets


def test_a_candidate_half_beside_the_anchor_makes_a_relation_unclear() -> None:
    shapes = [Placed("red", "star", 8, 30, 30), Placed("blue", "cross", 8, 60, 60), Placed("red", "star", 8, 55, 80)]
    # the second star's centre is left of the cross, but its box overlaps the cross's in x: neither side
    assert select(the("red", "star", LEFT_OF, ("blue", "cross")), shapes) is None
    shapes[2] = Placed("red", "star", 8, 75, 80)  # now clearly right of it
    assert select(the("red", "star", LEFT_OF, ("blue", "cross")), shapes) == (0,)


def test_expression_texts() -> None:
    assert the("red", "circle", LEFT_OF, ("blue", "square")).text() == "the red circle left of the blue square"
    assert Query(None, "cross", ALL_OF).text() == "all crosses"
    assert Query("red", None, ALL_OF).text() == "all red shapes"
    assert Query("red", "triangle", ALL_OF).text() == "all red triangles"


def test_masks_are_the_drawn_shapes_and_targets_their_union() -> None:
    image, masks = SCENE.image(), SCENE.instance_masks()
    assert masks.shape == (5, SIZE, SIZE) and masks.dtype == bool
    assert masks.sum(axis=0).max() == 1  # disjoint
    for shape, mask in zip(SHAPES, masks):
        assert mask[shape.y, shape.x]
        assert (image[mask] == COLOURS[shape.colour]).all()
    assert (image[~masks.any(axis=0)] == BACKGROUND).all()
    assert np.array_equal(SCENE.target_mask((0, 2)), masks[0] | masks[2])
    assert not SCENE.target_mask(()).any()


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_generated_expressions_are_what_select_says_and_cover_every_kind(seed: int) -> None:
    scene = make_scene(seed, 128)
    assert 2 <= len(scene.shapes) <= 6
    assert scene.instance_masks().sum(axis=0).max() == 1
    expressions = make_expressions(scene, per_kind=3)
    assert len({e.text for e in expressions}) == len(expressions)
    for e in expressions:
        assert e.kind in EXPRESSION_KINDS and e.text == e.query.text()
        assert select(e.query, scene.shapes) == e.targets
        assert (e.kind == EMPTY) == (not e.targets) and (e.kind == MULTI) == (len(e.targets) >= 2)
        assert (e.kind == RELATION) == (e.query.relation is not None and bool(e.targets))
        assert scene.target_mask(e.targets).sum() == scene.instance_masks()[list(e.targets)].sum()


def test_over_many_seeds_every_kind_is_asked() -> None:
    kinds = {e.kind for seed in range(20) for e in make_expressions(make_scene(seed))}
    assert kinds == {ATTRIBUTE, RELATION, MULTI, EMPTY}


def test_a_seed_fixes_scene_and_expressions_and_splits_follow_the_video_rule() -> None:
    a, b = make_scene(17), make_scene(17)
    assert a.shapes == b.shapes and np.array_equal(a.image(), b.image())
    assert [e.text for e in make_expressions(a)] == [e.text for e in make_expressions(b)]
    assert make_scene(18).shapes != a.shapes
    assert [make_scene(s).split for s in range(10)] == [split_of(s) for s in range(10)]
    assert [split_of(s) for s in range(5)] == [TRAIN] * 4 + [HELDOUT]


def test_writing_a_split_to_disk(tmp_path: Path) -> None:
    index = write_referring_set(tmp_path, 3, size=SIZE, split=HELDOUT, per_kind=1)
    assert [s["seed"] for s in index["scenes"]] == [4, 9, 14]
    assert json.loads((tmp_path / "index.json").read_text()) == index
    first = index["scenes"][0]
    with np.load(tmp_path / first["file"]) as data:
        scene = make_scene(4, SIZE)
        assert np.array_equal(data["image"], scene.image())
        assert np.array_equal(data["instance_masks"], scene.instance_masks())
    assert all(e["targets"] == list(select(Query.from_json(e["query"]), scene.shapes)) for e in first["expressions"])
