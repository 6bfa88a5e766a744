"""The Video-ChatGPT benchmark (VCGBench; paper Table 2): free-form answers about ActivityNet videos, scored 0-5 by a
judge on five aspects (spec 6.3).

Question files (Video-ChatGPT's `generic_qa.json`, `temporal_qa.json`, `consistency_qa.json`): JSON lists of
`{"video_name", "Q", "A"}`, and for consistency `{"video_name", "Q1", "Q2", "A"}` (two wordings of one question).
Items are identified as the reference does: `{video_name}_{k}`, k counting that video's earlier items (0, 1, ...).

Inference reuses `run_videoqa` (batched, resumable, each video decoded once, sharded under torchrun): generic and
temporal items are one question each; a consistency item is two questions, ids `{id}#1` and `{id}#2`, paired again
for scoring. Outputs: `{kind}.jsonl` with `{"id", "question", "answer", "pred"}` lines.

Scoring, each aspect with its own rubric and a 0-5 score per item (`{"score": n}`), on the same predictions as
Video-ChatGPT: correctness, detailed orientation and context on generic_qa; temporal on temporal_qa; consistency on
consistency_qa. The reported metric is the mean score per aspect over the parsed judgments, and their average.

Reference bug fixed: its consistency scorer builds the judge prompt with `question2 = sample['Q1']` (from
Video-ChatGPT), so the judge never sees the second wording. We show it Q2. Scores can therefore differ slightly
from numbers produced with the reference's script.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judges import Judge, Rubric
from .sharding import sharded_videoqa
from .videoqa import QAItem, load_json_list, read_jsonl

__all__ = [
    "ASPECTS",
    "ASPECT_KIND",
    "KINDS",
    "VCGItem",
    "pair_consistency",
    "predict_vcgbench",
    "qa_items",
    "read_vcg",
    "score_vcgbench",
]

KINDS = ("generic", "temporal", "consistency")
# Which predictions each aspect grades (Video-ChatGPT's eval_benchmark_{1..5} scripts).
ASPECT_KIND = {
    "correctness": "generic",
    "detail": "generic",
    "context": "generic",
    "temporal": "temporal",
    "consistency": "consistency",
}

_REPLY = (
    'Reply with one JSON object and nothing else, like {{"score": 2}}: an integer from 0 (worst) to 5 (best).'
)
_ONE = "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {pred}\n\n"
_SYSTEM = "You grade answers that a video assistant gave to questions about videos. "
_FIELDS = ("question", "answer", "pred")

ASPECTS: dict[str, Rubric] = {
    "correctness": Rubric(
        "correctness", "v1",
        _SYSTEM + "Rate the factual accuracy of the predicted answer against the correct answer: everything it "
        "states must agree with the correct answer, and wrong or made-up facts lower the score. Synonyms and "
        "paraphrases are fine.",
        _ONE + "How factually accurate is the prediction? " + _REPLY, _FIELDS,
    ),
    "detail": Rubric(
        "detail", "v1",
        _SYSTEM + "Rate how detailed and complete the predicted answer is compared with the correct answer: it "
        "should cover the main points of the correct answer and give specific details rather than generic "
        "statements. Synonyms and paraphrases are fine.",
        _ONE + "How complete and specific is the prediction? " + _REPLY, _FIELDS,
    ),
    "context": Rubric(
        "context", "v1",
        _SYSTEM + "Rate how well the predicted answer fits the overall context of the video, as the correct "
        "answer conveys it: it should keep to the main themes and events of the video and bring in nothing that "
        "does not belong to it. Synonyms and paraphrases are fine.",
        _ONE + "How well does the prediction fit the context of the video? " + _REPLY, _FIELDS,
    ),
    "temporal": Rubric(
        "temporal", "v1",
        _SYSTEM + "Rate how well the predicted answer gets the temporal order of events right, compared with the "
        "sequence of events in the correct answer. Synonyms and paraphrases are fine.",
        _ONE + "How well does the prediction respect the order of events? " + _REPLY, _FIELDS,
    ),
    "consistency": Rubric(
        "consistency", "v1",
        _SYSTEM + "Two differently worded questions ask for the same information about one video and share one "
        "correct answer. Rate the two predicted answers together: both should be correct, and they should agree "
        "with each other; contradictions between them, or with the correct answer, lower the score. Synonyms and "
        "paraphrases are fine.",
        "Question 1: {question1}\nQuestion 2: {question2}\nCorrect answer: {answer}\n"
        "Predicted answer to question 1: {pred1}\nPredicted answer to question 2: {pred2}\n\n"
        "How correct and consistent are the two predictions? " + _REPLY,
        ("question1", "question2", "answer", "pred1", "pred2"),
    ),
}


@dataclass(frozen=True)
class VCGItem:
    """One benchmark item: an id, its video, one question (two for consistency) and the reference answer."""

    id: str
    video_name: str
    questions: tuple[str, ...]
    answer: str


def read_vcg(path: str | os.PathLike, kind: str) -> list[VCGItem]:
    """Items of a Video-ChatGPT benchmark file, in file order.

    Args:
        path: generic_qa.json / temporal_qa.json ({"video_name", "Q", "A"}) or consistency_qa.json
            ({"video_name", "Q1", "Q2", "A"}).
        kind: "generic", "temporal" or "consistency".

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown kind, invalid JSON, not a list of objects, or a missing field.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown benchmark file kind {kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(path)
    data = load_json_list(path)
    names = ("Q1", "Q2") if kind == "consistency" else ("Q",)
    seen: Counter[str] = Counter()
    items = []
    for i, entry in enumerate(data):
        missing = [k for k in ("video_name", *names, "A") if entry.get(k) is None]
        if missing:
            need = ", ".join(("video_name", *names, "A"))
            raise ValueError(f"{path}: entry {i} lacks {missing} (a {kind} item needs {need})")
        video = str(entry["video_name"])
        items.append(VCGItem(f"{video}_{seen[video]}", video, tuple(str(entry[k]) for k in names), str(entry["A"])))
        seen[video] += 1
    return items


def qa_items(items: Sequence[VCGItem]) -> list[QAItem]:
    """The questions to answer: one per item, two for a consistency item (ids `{id}#1`, `{id}#2`)."""
    out = []
    for item in items:
        for k, question in enumerate(item.questions, 1):
            qid = item.id if len(item.questions) == 1 else f"{item.id}#{k}"
            out.append(QAItem(qid, item.video_name, question, item.answer))
    return out


def predict_vcgbench(
    model: Any,
    processor: Any,
    question_files: Mapping[str, str | os.PathLike],
    video_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    strategy: str = "contiguous",
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Answer the benchmark's questions: `{out_dir}/{kind}.jsonl` per question file, resumable, sharded under
    torchrun (see sharding.py).

    Args:
        model, processor: as for `run_videoqa`.
        question_files: kind ("generic", "temporal", "consistency") -> its JSON file.
        video_dir: the benchmark's videos, named `{video_name}.mp4` (or another extension).
        out_dir: output folder.
        strategy: how questions are split between processes ("contiguous" or "strided").
        **kwargs: `run_videoqa`'s options (batch_size, max_new_tokens, num_frames, num_workers, progress).

    Returns:
        kind -> the run summary (see `sharding.run_sharded`).
    """
    items = {kind: qa_items(read_vcg(path, kind)) for kind, path in question_files.items()}  # all files checked first
    kwargs.setdefault("dataset", "vcgbench")
    return {
        kind: sharded_videoqa(model, processor, qs, video_dir, Path(out_dir) / f"{kind}.jsonl", strategy=strategy,
                              **kwargs)
        for kind, qs in items.items()
    }


def pair_consistency(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Consistency predictions `{id}#1` / `{id}#2` -> one row per item with question1/2, answer, pred1/2, in the order
    of the first lines; items with only one of the two answers are left out."""
    halves: dict[str, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        base, _, k = str(record["id"]).rpartition("#")
        if not base or k not in ("1", "2"):
            raise ValueError(f"consistency prediction id {record['id']!r} does not end in #1 or #2")
        halves.setdefault(base, {})[k] = record
    return [
        {"id": base, "question1": h["1"]["question"], "question2": h["2"]["question"], "answer": h["1"]["answer"],
         "pred1": h["1"]["pred"], "pred2": h["2"]["pred"]}
        for base, h in halves.items()
        if len(h) == 2
    ]


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "count": len(rows),
        "judged": len(ok),
        "score": sum(r["score"] for r in ok) / len(ok) if ok else None,
        "unparsed": sum(r["status"] == "unparsed" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
    }


def score_vcgbench(
    judge: Judge,
    predictions: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    aspects: Sequence[str] = tuple(ASPECT_KIND),
    progress: bool = False,
) -> dict[str, Any]:
    """Score prediction files on the benchmark's aspects and write one judgment file per aspect.

    Args:
        judge: the judge (its cache makes a rerun cheap).
        predictions: kind ("generic", "temporal", "consistency") -> JSONL written by `run_videoqa` on `qa_items`.
            Aspects whose file is not given are left out.
        out_dir: `judgments/{aspect}.jsonl` is written there: per item its id, score, status, the judge's reply.
        aspects: the aspects to score.

    Returns:
        {"judge": judge and prompt versions, "aspects": {aspect: {"count", "judged", "score" (mean 0-5),
        "unparsed", "failed"}}, "average": mean of the five aspect scores (None unless all five were scored)}.
    """
    unknown = [a for a in aspects if a not in ASPECT_KIND]
    if unknown or any(kind not in KINDS for kind in predictions):
        raise ValueError(f"aspects must be among {list(ASPECT_KIND)} and files among {list(KINDS)}; got "
                         f"{list(aspects)} and {list(predictions)}")
    folder = Path(out_dir) / "judgments"
    folder.mkdir(parents=True, exist_ok=True)
    rows_by_kind: dict[str, list[dict[str, Any]]] = {}
    for kind, path in predictions.items():
        records = read_jsonl(path)
        rows_by_kind[kind] = pair_consistency(records) if kind == "consistency" else [dict(r) for r in records]
    results: dict[str, Any] = {}
    for aspect in aspects:
        kind = ASPECT_KIND[aspect]
        if kind not in rows_by_kind:
            continue
        rows = rows_by_kind[kind]
        rubric = ASPECTS[aspect]
        judgments = judge.judge(rubric, rows, progress=progress)
        judged = [
            {"id": row["id"], "score": j.score, "status": j.status, "reply": j.reply, "error": j.error}
            for row, j in zip(rows, judgments)
        ]
        with (folder / f"{aspect}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in judged)
        results[aspect] = {**_summary(judged), "prompt_version": rubric.prompt_version}
    scores = [results[a]["score"] for a in ASPECT_KIND if a in results]
    complete = len(scores) == len(ASPECT_KIND) and all(s is not None for s in scores)
    return {"judge": judge.describe(), "aspects": results, "average": sum(scores) / len(scores) if complete else None}
