"""One table across the alt_synth runs (main, synthlike, controlled variants) and per-phrasing accuracy.

Reads bench/results/alt_synth/*/results.json and variants/*/results.json (written by evaluate.py) and their
predictions; writes bench/results/alt_synth/summary.md and summary.json.

    python bench/alt_synth/compare.py --data-main /tmp/alt_main
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "alt_synth"
FAMILIES = ("colour", "shape", "count", "direction", "order", "appearance", "caption")


def load_runs() -> dict[str, dict]:
    runs = {}
    for name in ("main", "synthlike"):
        p = RESULTS / name / "results.json"
        if p.is_file():
            runs[name] = json.loads(p.read_text())
    for p in sorted((RESULTS / "variants").glob("*/results.json")):
        runs["synthlike + " + p.parent.name] = json.loads(p.read_text())
    for name in ("main", "synthlike"):
        p = RESULTS / "direction" / name / "results.json"
        if p.is_file():
            runs[f"direction-only {name}"] = json.loads(p.read_text())
    return runs


def predictions(run_dir: Path) -> dict[str, dict]:
    out = {}
    for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["id"]] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-main", type=Path, default=Path("/tmp/alt_main"), help="the main set (for phrasings)")
    ap.add_argument("--src", type=Path, default=REPO)
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    from videopanda.eval.metrics import exact_match

    runs = load_runs()
    ind = next(iter(runs.values()))["in_distribution"]
    lines = ["# alt_synth: all runs", "",
             "Exact match (%) per family; caption: token F1. main, synthlike and the synthlike + X variants share the "
             "same 60 scenes (seed 7) and questions; a run evaluates the families listed (n in brackets). The "
             "direction-only runs are another 80 scenes (seed 11), one direction question each. The first two columns "
             "are the in-distribution references (synth.py clips).", ""]
    cols = list(ind) + list(runs)
    lines += ["| family | " + " | ".join(cols) + " |", "|" + "---|" * (1 + len(cols))]
    summary: dict = {"in_distribution": ind, "runs": {}}
    for fam in FAMILIES:
        cells = []
        for lb in ind:
            g = ind[lb].get(fam, {})
            v = g.get("token_f1") if fam == "caption" else g.get("exact_match")
            cells.append("-" if v is None else (f"{v:.2f}" if fam == "caption" else f"{100 * v:.1f}") + f" ({g['n']})")
        for name, r in runs.items():
            s = r["per_family"].get(fam)
            if s is None:
                cells.append("")
                continue
            v = s["token_f1"] if fam == "caption" else s["exact_match"]
            cells.append((f"{v:.2f}" if fam == "caption" else f"{100 * v:.1f}") + f" ({s['n']})")
            summary["runs"].setdefault(name, {})[fam] = s
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines += ["", "Pinned factors per run (everything else: the alt_synth distribution):", ""]
    for name, r in runs.items():
        lines.append(f"- **{name}**: {r['meta'].get('pinned') or 'none'}; eval {r.get('eval', {}).get('wall_s')} s "
                     f"for {r['n']} questions")
    lines += ["", "## Seen (training) vs new phrasings, exact match % (n)", "",
              "| run | family | seen | new |", "|---|---|---|---|"]
    for name, r in runs.items():
        for fam, vals in r["breakdown"].get("phrasing", {}).items():
            if fam == "caption":
                continue
            cells = [f"{100 * vals[k]['exact_match']:.0f} ({vals[k]['n']})" if k in vals else ""
                     for k in ("seen", "new")]
            lines.append(f"| {name} | {fam} | " + " | ".join(cells) + " |")
    # per-phrasing accuracy, pooled over main and synthlike (the phrasing does not depend on the look)
    questions = {q["question_id"]: q for q in json.loads((args.data_main / "test_q.json").read_text())}
    by_template: dict = defaultdict(lambda: defaultdict(list))
    for name in ("main", "synthlike"):
        if name not in runs:
            continue
        for qid, r in predictions(RESULTS / name).items():
            if r["family"] == "caption":
                continue
            q = questions[qid]
            by_template[r["family"]][(q["phrasing"], _template(q["question"], r["family"]))].append(
                (name, exact_match(r["pred"], r["answer"])))
    lines += ["", "## Accuracy per phrasing (non-caption; main and synthlike runs)", "",
              "| family | phrasing | template | main | synthlike |", "|---|---|---|---|---|"]
    summary["phrasing"] = {}
    for fam in FAMILIES:
        for (kind, tmpl), hits in sorted(by_template.get(fam, {}).items()):
            cells = []
            for name in ("main", "synthlike"):
                h = [ok for n, ok in hits if n == name]
                cells.append(f"{sum(h)}/{len(h)}" if h else "")
            lines.append(f"| {fam} | {kind} | {tmpl} | " + " | ".join(cells) + " |")
            summary["phrasing"][f"{fam}|{kind}|{tmpl}"] = cells
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


def _template(question: str, family: str) -> str:
    """The question with the object name replaced by a placeholder, e.g. 'Where is the {obj} heading?'."""
    words = {"red", "green", "blue", "yellow", "white", "purple", "orange"}
    shapes = {"circle", "square", "triangle", "star"}
    out, toks = [], question.replace("?", " ?").replace(".", " .").replace(":", " :").replace(",", " ,").split()
    i = 0
    while i < len(toks):
        t = toks[i].lower()
        if t in words and i + 1 < len(toks) and toks[i + 1].lower() in shapes:
            out.append("{obj}")
            i += 2
            continue
        out.append("{colour}" if t in words else "{shape}" if t in shapes and family == "colour" else toks[i])
        i += 1
    return " ".join(out).replace(" ?", "?").replace(" .", ".").replace(" :", ":").replace(" ,", ",")


if __name__ == "__main__":
    main()
