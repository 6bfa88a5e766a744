"""Judge-free VideoQA metrics: exact match, answer-in-prediction match and token F1 on normalised text.

The reference scores open-ended answers with a GPT-3.5 judge only (spec 6.2). These metrics need no API, are
deterministic and cost nothing, so every run gets them; on short canonical answers (the synthetic set, MSVD/MSRVTT
single words) they track the judge closely, and on free-form answers they are a lower bound.

Normalisation (SQuAD-style, extended for video QA):
    lowercase -> apostrophes removed ("man's" -> "mans") -> every other punctuation mark becomes a space
    ("t-shirt" -> "t shirt") -> the articles a/an/the dropped -> number words zero..ten become digits -> single spaces.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["contains_match", "exact_match", "normalize", "summarize", "token_f1"]

METRICS = ("exact_match", "contains_match", "token_f1")
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_APOSTROPHES = frozenset("'\u2018\u2019`")


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _tokens(text: str) -> list[str]:
    """Normalised words of `text` (see the module docstring)."""
    text = "".join("" if ch in _APOSTROPHES else " " if _is_punctuation(ch) else ch for ch in str(text).lower())
    return [NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES]


def normalize(text: str) -> str:
    """Canonical form for comparison: "The Three dogs!" -> "3 dogs"."""
    return " ".join(_tokens(text))


def exact_match(pred: str, answer: str) -> bool:
    """Whether the normalised prediction equals the normalised answer."""
    return _tokens(pred) == _tokens(answer)


def contains_match(pred: str, answer: str) -> bool:
    """Whether the normalised answer occurs as whole words in the normalised prediction.

    "it is a red circle" contains "red" and "red circle", but not "red c" or "circ". An answer that normalises to
    nothing matches only a prediction that does too.
    """
    p, a = _tokens(pred), _tokens(answer)
    if not a:
        return not p
    return any(p[i : i + len(a)] == a for i in range(len(p) - len(a) + 1))


def token_f1(pred: str, answer: str) -> float:
    """Harmonic mean of word precision and recall (multiset overlap), as SQuAD; 1.0 when both are empty."""
    p, a = _tokens(pred), _tokens(answer)
    if not p or not a:
        return float(p == a)
    common = sum((Counter(p) & Counter(a)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(a)
    return 2 * precision * recall / (precision + recall)


def _aggregate(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(records)
    out: dict[str, Any] = {"count": n}
    for name, fn in (("exact_match", exact_match), ("contains_match", contains_match), ("token_f1", token_f1)):
        out[name] = sum(float(fn(r["pred"], r["answer"])) for r in records) / n if n else None
    return out


def summarize(records: Iterable[Mapping[str, Any]], key: str | None = "family") -> dict[str, Any]:
    """Counts and mean metrics, overall and per value of `key`.

    Args:
        records: dicts with "pred" and "answer" (and optionally `key`, e.g. "family" or "type").
        key: the grouping field; records without it count only overall. None: no groups.

    Returns:
        {"count", "exact_match", "contains_match", "token_f1", "key", "groups": {value: {count and the three
        means}}}, groups sorted by name; means are in [0, 1], None when there are no records.

    Raises:
        ValueError: a record has no "pred" or no "answer".
    """
    records = list(records)
    for i, r in enumerate(records):
        if "pred" not in r or "answer" not in r:
            raise ValueError(f"record {i} needs 'pred' and 'answer', got keys {sorted(r)}")
    groups: dict[str, list[Mapping[str, Any]]] = {}
    if key is not None:
        for r in records:
            if r.get(key) is not None:
                groups.setdefault(str(r[key]), []).append(r)
    return {**_aggregate(records), "key": key, "groups": {g: _aggregate(groups[g]) for g in sorted(groups)}}
