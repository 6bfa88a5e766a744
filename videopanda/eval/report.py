"""Evaluation reports: results JSON plus a markdown table with the paper's Video-Panda numbers beside ours.

Paper numbers: arXiv 2412.18609v2, Table 1 (zero-shot open-ended VideoQA, accuracy % / score out of 5, judged by
GPT-3.5; TGIF is the authors' re-evaluated TGIF-QA*) and Table 2 (Video-ChatGPT benchmark). They come from a GPT-3.5
judge whose behaviour drifts over time, so compare with the same judge, and read gaps of a point or two with care.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PAPER_QA", "PAPER_VCG", "qa_markdown", "vcg_markdown", "write_report"]

PAPER_SOURCE = "Video-Panda, paper (GPT-3.5 judge)"
PAPER_QA: dict[str, dict[str, float]] = {
    "msvd": {"accuracy": 64.7, "score": 3.8},
    "msrvtt": {"accuracy": 54.8, "score": 3.4},
    "tgif": {"accuracy": 42.9, "score": 3.2},
    "activitynet": {"accuracy": 40.0, "score": 3.3},
}
PAPER_VCG: dict[str, float] = {
    "correctness": 2.74,
    "detail": 2.47,
    "context": 3.01,
    "temporal": 2.26,
    "consistency": 2.36,
    "average": 2.57,
}
BENCHMARK_NAMES = {
    "msvd": "MSVD-QA",
    "msrvtt": "MSRVTT-QA",
    "tgif": "TGIF-QA",
    "activitynet": "ActivityNet-QA",
    "synth": "synthetic QA",
    "vcgbench": "Video-ChatGPT benchmark",
}
VCG_COLUMNS = (
    ("correctness", "Correctness"),
    ("detail", "Detail"),
    ("context", "Context"),
    ("temporal", "Temporal"),
    ("consistency", "Consistency"),
    ("average", "Average"),
)


def _num(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _ours(result: Mapping[str, Any]) -> str:
    return f"ours ({result['model']})" if result.get("model") else "ours"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _judge_line(judge: Mapping[str, Any] | None, prompt_version: str | None) -> str:
    if not judge:
        return "Judge: none (judge-free metrics only; the paper's accuracy and score are GPT-judged, not comparable)."
    temperature = "API default" if judge.get("temperature") is None else judge["temperature"]
    version = f", prompts {prompt_version}" if prompt_version and "," in prompt_version else (
        f", prompt {prompt_version}" if prompt_version else "")
    return f"Judge: {judge['judge']} `{judge['judge_model']}`, temperature {temperature}{version}."


def qa_markdown(result: Mapping[str, Any]) -> str:
    """Markdown for one open-ended VideoQA result (the `results.json` that `videopanda eval judge` / `videoqa`
    write): ours beside the paper's row for the benchmark, per-group numbers, and what failed.

    `result` keys: "dataset", "model", "scores" (judge-free, `merge_and_score`), and when judged "judge" and
    "judged" (`judges.aggregate`); optionally "run" (the inference summary).
    """
    dataset = result.get("dataset")
    scores, judged = result["scores"], result.get("judged")
    lines = [f"## {BENCHMARK_NAMES.get(dataset, dataset or 'VideoQA')}", ""]
    header = ["", "accuracy (%)", "score (0-5)", "judged", "exact match (%)", "contains (%)", "token F1"]
    ours = [
        _ours(result),
        _num(judged and judged["accuracy"], 1, 100),
        _num(judged and judged["score"]),
        str(judged["judged"]) if judged else "-",
        _num(scores["exact_match"], 1, 100),
        _num(scores["contains_match"], 1, 100),
        _num(scores["token_f1"]),
    ]
    rows = [ours]
    if dataset in PAPER_QA:
        paper = PAPER_QA[dataset]
        rows.append([PAPER_SOURCE, f"{paper['accuracy']:.1f}", f"{paper['score']:.1f}", "", "", "", ""])
    lines += _table(header, rows)
    judge = result.get("judge")
    lines += ["", _judge_line(judge, judge and judge.get("prompt_version"))]
    groups = scores.get("groups") or {}
    if groups:
        judged_groups = (judged or {}).get("groups", {})
        lines += ["", f"Per {scores.get('key')}:", ""]
        group_rows = []
        for name, g in groups.items():
            jg = judged_groups.get(name)
            group_rows.append([name, str(g["count"]), _num(jg and jg["accuracy"], 1, 100), _num(jg and jg["score"]),
                               _num(g["exact_match"], 1, 100), _num(g["contains_match"], 1, 100),
                               _num(g["token_f1"])])
        lines += _table([scores.get("key") or "group", "count", "accuracy (%)", "score", "exact match (%)",
                         "contains (%)", "token F1"], group_rows)
    lines += ["", _failures(result)]
    return "\n".join(lines) + "\n"


def _failures(result: Mapping[str, Any]) -> str:
    run, judged, scores = result.get("run") or {}, result.get("judged") or {}, result["scores"]
    parts = [
        f"{run.get('num_failed', 0)} not answered (video missing or undecodable)",
        f"{scores.get('missing', 0)} without a prediction",
        f"{judged.get('unparsed', 0)} judge replies unparsed",
        f"{judged.get('failed', 0)} judge requests failed",
    ]
    return f"Items: {scores['count']} predictions; failed: " + ", ".join(parts) + "."


def vcg_markdown(result: Mapping[str, Any]) -> str:
    """Markdown for a Video-ChatGPT benchmark result (`vcgbench.score_vcgbench`, plus "model"): the five aspect
    scores and their average, ours beside the paper's row."""
    aspects = result["aspects"]
    ours = [_ours(result)]
    for key, _ in VCG_COLUMNS:
        ours.append(_num(result.get("average") if key == "average" else (aspects.get(key) or {}).get("score")))
    paper = [PAPER_SOURCE] + [f"{PAPER_VCG[key]:.2f}" for key, _ in VCG_COLUMNS]
    lines = [f"## {BENCHMARK_NAMES['vcgbench']}", ""]
    lines += _table([""] + [title for _, title in VCG_COLUMNS], [ours, paper])
    versions = ", ".join(s["prompt_version"] for s in aspects.values())
    lines += ["", _judge_line(result.get("judge"), versions or None), ""]
    counts = [[a, str(s["count"]), str(s["judged"]), str(s["unparsed"]), str(s["failed"])] for a, s in aspects.items()]
    lines += _table(["aspect", "items", "judged", "unparsed", "failed"], counts)
    runs = result.get("runs") or {}
    not_answered = sum(r.get("num_failed", 0) for r in runs.values())
    if runs:
        lines += ["", f"Questions not answered (video missing or undecodable): {not_answered}."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, result: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write `results.json` and `report.md` to `out_dir`; returns their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "report.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path
