"""Reading structured answers out of a VLM's free text, without trusting it.

Models wrap JSON in code fences, add prose before and after, answer "Score: 4/5", "(B) the red cube"
or just "the red cube".
Every helper here takes any text (or anything at all) and returns the parsed value, or None when the
text holds no valid one: a malformed answer is an invalid vote, never an exception in the caller's loop.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T", bound=Hashable)

JSON_OBJECT_START = "{"
# an integer that is not part of a decimal number ("4", "4/5", "4." at a sentence end; not "4.5")
_INTEGER = r"[-+]?\d+(?!\d|\.\d)"
INTEGER = re.compile(r"(?<![\d.])" + _INTEGER)
SCORE_AFTER_KEYWORD = re.compile(r"\b(?:score|rating)\b\W{0,5}(?:is\W{0,3})?(" + _INTEGER + ")", re.IGNORECASE)
CHOICE_AFTER_KEYWORD = re.compile(r"\b(?:answer|option|choice)\b\W{0,5}(?:is\W{0,3})?\(?([A-Za-z]|\d+)\)?(?![A-Za-z\d])",
                                  re.IGNORECASE)
CHOICE_LEADING = re.compile(r"^\(?([A-Z]|\d+)(?:[).:]|$)")  # "B", "B) ...", "(B) ...", "2.", not "A cube"
CHOICE_PARENTHESISED = re.compile(r"\(([A-Z])\)")


def extract_json_object(text: Any) -> dict[str, Any] | None:
    """The first JSON object in `text` (code fences and surrounding prose ignored), or None."""
    if not isinstance(text, str):
        return None
    decoder = json.JSONDecoder()
    start = text.find(JSON_OBJECT_START)
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return value
        start = text.find(JSON_OBJECT_START, start + 1)
    return None


def parse_score(text: Any, low: int = 1, high: int = 5) -> int | None:
    """An integer score in [low, high]: the one after "score"/"rating" if there is one, else the first
    integer in the text. Out of range or absent: None."""
    if not isinstance(text, str):
        return None
    match = SCORE_AFTER_KEYWORD.search(text) or INTEGER.search(text)
    if match is None:
        return None
    score = int(match.group(1) if match.re is SCORE_AFTER_KEYWORD else match.group(0))
    return score if low <= score <= high else None


def _option_index(token: str, n_options: int) -> int | None:
    index = int(token) - 1 if token.isdigit() else ord(token.upper()) - ord("A")
    return index if 0 <= index < n_options else None


def _named_option(text: str, option_texts: Sequence[str]) -> int | None:
    """The one option whose text the answer names as whole words ("It is the blue square." → "blue
    square"); an option named only inside a longer named option ("red" in "red star") does not count.
    None when no option, or several, are named."""
    lowered = text.lower()
    named = [i for i, option in enumerate(option_texts) if option.strip() and
             re.search(r"(?<!\w)" + re.escape(option.strip().lower()) + r"(?!\w)", lowered)]
    longest = [i for i in named if not any(j != i and option_texts[i].strip().lower() in option_texts[j].lower()
                                           for j in named)]
    return longest[0] if len(longest) == 1 else None


def parse_choice(text: Any, n_options: int, option_texts: Sequence[str] = ()) -> int | None:
    """The 0-based index of a multiple-choice answer given as a letter (A, B, …) or a 1-based number,
    or, with `option_texts`, by naming one option's text.

    Looked for, in order: after "answer"/"option"/"choice"; at the very start ("B", "(B) …", "2."); a
    parenthesised capital anywhere ("… so (C)"); then the one option whose text the answer names. A
    letter or number outside the n options, or an answer naming several options: None.
    """
    if not isinstance(text, str) or n_options < 1:
        return None
    stripped = text.strip()
    for pattern, subject in ((CHOICE_AFTER_KEYWORD, text), (CHOICE_LEADING, stripped), (CHOICE_PARENTHESISED, text)):
        match = pattern.search(subject)
        if match is not None:
            return _option_index(match.group(1), n_options)
    return _named_option(text, option_texts[:n_options]) if option_texts else None


def majority_vote(values: Iterable[T | None]) -> tuple[T | None, dict[T, int]]:
    """The most frequent valid value and the count of each, ignoring None (invalid answers).

    Ties go to the value seen first, so the outcome depends only on the samples, not on hashing.
    No valid value at all: (None, {}).
    """
    counts = Counter(value for value in values if value is not None)
    if not counts:
        return None, {}
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts; Counter keeps first-seen order
    return winner, dict(counts)
