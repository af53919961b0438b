"""Parsing VLM answers: the right value out of typical answers, and never an exception out of garbage."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.vlm.parsing import extract_json_object, majority_vote, parse_choice, parse_score

ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
JSONISH_TEXT = st.text(alphabet='{}[]":,0123456789.-eE nulltruefalseABC\n`', max_size=120)  # near-misses of JSON
PROSE = st.text(alphabet=st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=80)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=10)
OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)


@settings(max_examples=300, deadline=None)
@given(text=ANY_TEXT | JSONISH_TEXT)
def test_garbage_never_raises_and_gives_none_or_a_valid_value(text):
    found = extract_json_object(text)
    assert found is None or isinstance(found, dict)
    score = parse_score(text, 1, 5)
    assert score is None or 1 <= score <= 5
    choice = parse_choice(text, 4)
    assert choice is None or 0 <= choice < 4
    named = parse_choice(text, 4, ["red", "(x", "", "a b.*"])  # regex metacharacters, an empty option
    assert named is None or 0 <= named < 4


@settings(max_examples=200, deadline=None)
@given(before=PROSE, obj=OBJECTS, after=ANY_TEXT)
def test_the_first_object_is_found_in_any_surrounding_prose(before, obj, after):
    assert extract_json_object(f"{before}{json.dumps(obj)}{after}") == obj


@pytest.mark.parametrize("text", [None, 3, b"{}", ["{}"]])
def test_non_text_is_invalid_not_an_error(text):
    assert extract_json_object(text) is None and parse_score(text) is None and parse_choice(text, 3) is None


def test_json_in_code_fences_with_trailing_prose():
    answer = 'Sure! Here is the plan:\n```json\n{"anchor": [3, 4], "waypoints": [{"name": "grasp"}]}\n```\nHope it helps {.'
    assert extract_json_object(answer) == {"anchor": [3, 4], "waypoints": [{"name": "grasp"}]}
    assert extract_json_object('[1, 2] then {"a": 1}') == {"a": 1}  # a list first is skipped
    assert extract_json_object('{"a": 1,}') is None  # not JSON
    assert extract_json_object("{" * 5000) is None  # deep nesting: invalid, not a RecursionError


@pytest.mark.parametrize("text, score", [("4", 4), ("Score: 3/5", 3), ("I'd rate it 5.", 5), ('{"score": 2}', 2),
                                         ("On a 1-5 scale, my score is 4", 4), ("rating = 1", 1), ("4.5", None),
                                         ("7", None), ("0", None), ("-3", None), ("no idea", None), ("", None)])
def test_scores(text, score):
    assert parse_score(text, 1, 5) == score


@pytest.mark.parametrize("text, choice", [("B", 1), ("(C) the red cube", 2), ("b) yes", None), ("Answer: d", 3),
                                          ("The answer is (A).", 0), ("2.", 1), ("option 3", 2), ("E", None),
                                          ("A cube is visible", None), ("I think so, (B)", 1), ("Answer: 9", None), ("", None)])
def test_choices(text, choice):
    assert parse_choice(text, 4) == choice


OPTIONS = ["red star", "blue square", "red", "12"]


@pytest.mark.parametrize("text, choice", [
    ("the blue square", 1), ("It is the Blue Square.", 1),
    ("the red star", 0),  # "red" is named only inside "red star"
    ("red", 2), ("Red, I think", 2),
    ("12 times", 3), ("2", 1),  # a leading number is still an option number
    ("the blue square or the red star", None),  # two options: ambiguous
    ("a green circle", None), ("squares", None),  # no option named as whole words
    ("B", 1), ("Answer: red star", 0),  # "Answer: r..." is no letter answer; the option's text decides
])
def test_choices_by_option_text(text, choice):
    assert parse_choice(text, 4, OPTIONS) == choice


def test_option_texts_beyond_n_options_are_not_choices():
    assert parse_choice("the blue square", 1, OPTIONS) is None and parse_choice("the blue square", 4) is None


def test_majority_vote_ignores_invalid_and_breaks_ties_by_first_seen():
    assert majority_vote([2, None, 3, 3, None, 2, 3]) == (3, {2: 2, 3: 3})
    assert majority_vote(["B", "A", "A", "B"]) == ("B", {"B": 2, "A": 2})
    assert majority_vote([None, None]) == (None, {})
    assert majority_vote([]) == (None, {})


@given(st.lists(st.none() | st.integers(1, 3), max_size=20))
def test_majority_vote_winner_has_the_top_count(values):
    winner, counts = majority_vote(values)
    assert sum(counts.values()) == sum(v is not None for v in values)
    assert winner is None if not counts else counts[winner] == max(counts.values())
