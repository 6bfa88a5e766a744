"""Per-family accuracy of a model on a set written by bench/alt_synth/generate.py, through the real CLI.

1. ``python3 -m videopanda eval videoqa`` answers every question (batched, resumable) into OUT/eval/predictions.jsonl;
   ``--max-new-tokens 128`` as ``videopanda ask`` uses, so long captions are not cut short.
2. This script scores the predictions per family: normalised exact match and contains-match (the metrics of
   videopanda.eval.metrics: lowercase, punctuation and articles dropped, number words as digits), plus token F1
   (the meaningful number for ``caption``). It also breaks the scores down by the rendering factors recorded in
   clips.json (resolution, timing, background, outline, object size of the asked object, phrasing seen/new ...).
3. A stratified sample of questions goes through ``python3 -m videopanda ask VIDEO QUESTION --json``, one process
   each, and its answers are compared with eval's (greedy decoding: they should be identical).

Writes OUT/results.json and OUT/results.md (OUT/eval/ holds eval's own predictions.jsonl, results.json, report.md).

    python bench/alt_synth/evaluate.py --data /tmp/alt_synth --out bench/results/alt_synth/main --ask-sample 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO  # folder holding the `videopanda` package that is evaluated (--src); set in main()

FAMILIES = ("colour", "shape", "count", "direction", "order", "appearance", "caption")
# In-distribution references (same model, synth.py's clips): through mp4 files, and in memory (larger n).
IN_DIST = {
    "synth mp4 (n=131)": ("bench/results/eval_default_synth/results.json", "files"),
    "synth stream (n=600)": ("bench/results/train_default/stage2_visual_only/eval_synth_stream.json", "stream"),
}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def question_files(data: Path, out: Path, families: tuple[str, ...] | None) -> tuple[Path, Path]:
    """test_q/test_a of the set, or filtered copies (under OUT/eval_input/) holding only `families`."""
    if not families:
        return data / "test_q.json", data / "test_a.json"
    (out / "eval_input").mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("test_q.json", "test_a.json"):
        items = [x for x in json.loads((data / name).read_text()) if x["family"] in families]
        (out / "eval_input" / name).write_text(json.dumps(items, indent=1) + "\n")
        paths.append(out / "eval_input" / name)
    return paths[0], paths[1]


DEVICE = os.environ.get("ALT_SYNTH_DEVICE", "cpu")  # "cuda" to score on a GPU


def run_eval(data: Path, out: Path, model: str, batch_size: int, max_new_tokens: int,
             families: tuple[str, ...] | None = None) -> dict:
    q_path, a_path = question_files(data, out, families)
    cmd = [sys.executable, "-m", "videopanda", "eval", "videoqa", "--dataset", "synth",
           "--questions", str(q_path), "--answers", str(a_path),
           "--video-dir", str(data / "videos"), "--out", str(out / "eval"), "--model", model,
           "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens), "--device", DEVICE]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=SRC, env=_env())
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - started, 1)}


def _bin(value: float, edges: list[float]) -> str:
    for lo, hi in zip(edges, edges[1:]):
        if lo <= value < hi:
            return f"{lo:g}-{hi:g}"
    return f">={edges[-1]:g}"


def item_features(clip: dict, family: str, question: dict) -> dict:
    """Rendering factors and scene properties of one question, for the breakdowns."""
    f = clip["factors"]
    feats = {
        "res": f"{f['width']}x{f['height']}",
        "timing": f"{f['frames']}@{f['fps']}",
        "background": f["background_kind"],
        "outline": f["outline"],
        "shading": f["shading"],
        "crf": f["crf"],
        "n_objects": str(len(clip["objects"])),
        "phrasing": question.get("phrasing", "?"),
    }
    idx = sample_indices(f["frames"], float(f["fps"]), 8)  # the frames the model sees (8, the default's count)
    feats["seen_span"] = _bin((idx[-1] + 1) / f["frames"], [0, 0.8, 0.95, 1.01])
    about = clip["questions"][family].get("about")
    obj = next((o for o in clip["objects"] if o["name"] == about), None)
    if obj is not None:  # the asked-about object (for appearance: only when present)
        feats["radius_px_at_224"] = _bin(obj["radius_px"] * 224 / max(f["width"], f["height"]), [0, 10, 14, 18, 24, 99])
        feats["radius_frac"] = _bin(obj["radius_frac"], [0, 0.07, 0.10, 0.2])
        lo, hi = obj["frames_visible"]
        seen = [i for i in idx if lo <= i < hi]
        vis_travel = obj["travel_frac"] * (seen[-1] - seen[0]) / max(f["frames"] - 1, 1) if len(seen) > 1 else 0.0
        feats["seen_travel_frac"] = _bin(vis_travel, [0, 0.15, 0.3, 0.45, 1.1])
        feats["colour_of_object"] = obj["name"].split()[0]
        feats["shape_of_object"] = obj["name"].split()[1]
    return feats


def score(data: Path, predictions: Path) -> tuple[dict, list[dict]]:
    clips = {c["video_name"]: c for c in json.loads((data / "clips.json").read_text())}
    questions = {q["question_id"]: q for q in json.loads((data / "test_q.json").read_text())}
    rows = []
    for line in predictions.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        q = questions[r["id"]]
        clip = clips[q["video_name"]]
        rows.append({**r, "video_name": q["video_name"], "exact": exact_match(r["pred"], r["answer"]),
                     "contains": contains_match(r["pred"], r["answer"]), "f1": token_f1(r["pred"], r["answer"]),
                     "features": item_features(clip, r["family"], q)})

    def summary(items: list[dict]) -> dict:
        n = len(items)
        return {"n": n, "exact_match": sum(i["exact"] for i in items) / n, "contains_match":
                sum(i["contains"] for i in items) / n, "token_f1": sum(i["f1"] for i in items) / n}

    fams = defaultdict(list)
    for r in rows:
        fams[r["family"]].append(r)
    non_caption = [r for r in rows if r["family"] != "caption"]
    result = {"n": len(rows), "overall_without_caption": summary(non_caption),
              "per_family": {f: summary(fams[f]) for f in FAMILIES if fams[f]}}
    breakdown: dict = {}
    for r in rows:
        for feat, value in r["features"].items():
            breakdown.setdefault(feat, {}).setdefault(r["family"], {}).setdefault(value, []).append(r)
    result["breakdown"] = {feat: {fam: {v: summary(items) for v, items in sorted(vals.items())}
                                  for fam, vals in sorted(by_fam.items())} for feat, by_fam in breakdown.items()}
    # confusion of the short-answer families: answer -> prediction counts
    result["confusions"] = {}
    for fam in ("colour", "shape", "count", "direction", "appearance", "order"):
        conf: dict = defaultdict(lambda: defaultdict(int))
        for r in fams.get(fam, []):
            conf[normalize(r["answer"])][normalize(r["pred"])] += 1
        result["confusions"][fam] = {a: dict(p) for a, p in sorted(conf.items())}
    return result, rows


def ask_check(data: Path, rows: list[dict], k: int, model: str, seed: int) -> dict:
    """Runs `videopanda ask --json` on a family-stratified sample and compares with eval's predictions."""
    rng = random.Random(seed)
    by_fam = defaultdict(list)
    for r in rows:
        by_fam[r["family"]].append(r)
    sample, fams = [], [f for f in FAMILIES if by_fam[f]]
    while len(sample) < min(k, len(rows)):
        for f in fams:
            pool = [r for r in by_fam[f] if r not in sample]
            if pool and len(sample) < k:
                sample.append(rng.choice(pool))
    checks, started = [], time.perf_counter()
    for r in sample:
        video = data / "videos" / f"{r['video_name']}.mp4"
        cmd = [sys.executable, "-m", "videopanda", "ask", str(video), r["question"], "--json", "--model", model,
               "--device", DEVICE]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=SRC, env=_env())
        answer = json.loads(proc.stdout.strip().splitlines()[-1])["answer"] if proc.returncode == 0 else None
        checks.append({"id": r["id"], "family": r["family"], "question": r["question"], "reference": r["answer"],
                       "eval_pred": r["pred"], "ask_answer": answer, "same": answer == r["pred"],
                       "same_normalised": answer is not None and normalize(answer) == normalize(r["pred"]),
                       "ask_rc": proc.returncode, "ask_s": round(time.perf_counter() - t0, 1),
                       **({"stderr_tail": proc.stderr[-400:]} if proc.returncode else {})})
    return {"n": len(checks), "identical": sum(c["same"] for c in checks),
            "identical_normalised": sum(c["same_normalised"] for c in checks),
            "wall_s": round(time.perf_counter() - started, 1), "items": checks}


def _commit(src: Path) -> str | None:
    """HEAD of the checkout (when src is the checkout itself, uncommitted edits are flagged)."""
    if src == REPO:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "videopanda"], capture_output=True, text=True,
                               cwd=REPO).stdout.strip()
        return head + ("+uncommitted videopanda edits" if dirty else "")
    stamp = src / "COMMIT"
    return stamp.read_text().strip() if stamp.is_file() else None


def in_distribution() -> dict:
    out = {}
    for label, (path, kind) in IN_DIST.items():
        p = REPO / path
        if not p.is_file():
            continue
        d = json.loads(p.read_text())
        if kind == "files":
            out[label] = {f: {"n": g["count"], "exact_match": g["exact_match"], "token_f1": g["token_f1"]}
                          for f, g in d["scores"]["groups"].items()}
        else:  # score = exact match, token F1 for captions
            out[label] = {f: {"n": g["n"], ("token_f1" if f == "caption" else "exact_match"): g["score"]}
                          for f, g in d["per_family"].items()}
    return out


def markdown(result: dict, title: str) -> str:
    ind = result.get("in_distribution", {})
    labels = list(ind)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
    lines = [f"# {title}", "", f"Data: `{result['data']}` ({result['meta'].get('n')} clips, seed "
             f"{result['meta'].get('seed')}, pinned factors: {result['meta'].get('pinned') or 'none (all alt)'}).", ""]
    if "eval" in result:
        lines += [f"Eval: `{result['eval']['command']}`, {result['eval']['wall_s']} s wall for {result['n']} "
                  f"questions ({result['n'] / result['eval']['wall_s']:.2f} answers/s incl. model load).", ""]
    head = "| family | n | exact (%) | contains (%) | token F1 | " + " | ".join(f"{lb} exact (%)" for lb in labels)
    head += " |"
    lines += [head, "|" + "---|" * (5 + len(labels))]
    for fam, s in list(result["per_family"].items()) + [("all but caption", result["overall_without_caption"])]:
        refs = []
        for lb in labels:
            g = ind[lb].get(fam, {})
            is_f1 = fam == "caption" and "token_f1" in g
            refs.append(f"F1 {g['token_f1']:.2f}" if is_f1 else pct(g.get("exact_match")))
        lines.append(f"| {fam} | {s['n']} | {pct(s['exact_match'])} | {pct(s['contains_match'])} | "
                     f"{s['token_f1']:.2f} | " + " | ".join(refs) + " |")
    lines += ["", "Caption: exact match is near 0 by nature; token F1 is the caption metric (in-distribution F1 "
              "in the reference columns).", ""]
    if "ask_check" in result:
        a = result["ask_check"]
        lines += [f"`videopanda ask --json` on {a['n']} sampled questions: {a['identical']}/{a['n']} answers "
                  f"identical to eval's ({a['identical_normalised']}/{a['n']} after normalisation), "
                  f"{a['wall_s']} s.", ""]
    lines += ["## Breakdowns (exact match %, n in brackets; caption: token F1)", ""]
    for feat, by_fam in result["breakdown"].items():
        values = sorted({v for vals in by_fam.values() for v in vals})
        lines += [f"### {feat}", "", "| family | " + " | ".join(values) + " |", "|" + "---|" * (1 + len(values))]
        for fam in FAMILIES:
            if fam not in by_fam:
                continue
            cells = []
            for v in values:
                s = by_fam[fam].get(v)
                key = "token_f1" if fam == "caption" else "exact_match"
                if s is None:
                    cells.append("")
                else:
                    value = f"{s[key]:.2f}" if fam == "caption" else f"{100 * s[key]:.0f}"
                    cells.append(f"{value} ({s['n']})")
            lines.append(f"| {fam} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Confusions (answer -> predictions)", ""]
    for fam, conf in result["confusions"].items():
        lines.append(f"- **{fam}**: " + "; ".join(f"{a} -> " + ", ".join(f"{p or '∅'} x{c}" for p, c in
                                                                          sorted(ps.items(), key=lambda x: -x[1]))
                                                 for a, ps in conf.items()))
    lines += ["", "## Failing examples", ""]
    for ex in result["failures"]:
        lines.append(f"- `{ex['id']}` [{ex['family']}] {ex['question']} -> pred `{ex['pred']}`, answer "
                     f"`{ex['answer']}` ({', '.join(f'{k}={v}' for k, v in ex['features'].items())})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder written by generate.py")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", default="videopanda-default")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128, help="as `videopanda ask` (default 128)")
    ap.add_argument("--ask-sample", type=int, default=0, help="questions to re-ask through `videopanda ask --json`")
    ap.add_argument("--families", default="",
                    help="comma-separated subset of families to evaluate (default: every question of the set)")
    ap.add_argument("--skip-eval", action="store_true", help="score an existing OUT/eval/predictions.jsonl")
    ap.add_argument("--src", type=Path, default=REPO,
                    help="folder holding the videopanda package to run (default: this checkout); e.g. an export of "
                         "a fixed commit: git archive HEAD videopanda | tar -x -C /tmp/vp_head")
    ap.add_argument("--title", default="Default model on alt_synth clips (independent renderer)")
    args = ap.parse_args()
    global SRC, contains_match, exact_match, normalize, token_f1, sample_indices
    SRC = args.src.resolve()
    sys.path.insert(0, str(SRC))
    from videopanda.eval.metrics import contains_match, exact_match, normalize, token_f1
    from videopanda.video import sample_indices

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    families = tuple(f for f in args.families.split(",") if f) or None
    eval_info = None if args.skip_eval else run_eval(data, args.out.resolve(), args.model, args.batch_size,
                                                     args.max_new_tokens, families)
    result, rows = score(data, args.out / "eval" / "predictions.jsonl")
    result = {"data": str(args.data), "meta": json.loads((data / "meta.json").read_text()), "model": args.model,
              "src": str(SRC), "src_commit": _commit(SRC),
              **({"eval": eval_info} if eval_info else {}), **result}
    old = args.out / "results.json"
    if eval_info is None and old.is_file():  # keep the timing of the run that made the predictions
        prev = json.loads(old.read_text())
        for key in ("eval", "ask_check"):
            if key in prev:
                result[key] = prev[key]
    rng = random.Random(0)
    fails = [r for r in rows if not r["exact"] and r["family"] != "caption"]
    fails_cap = sorted((r for r in rows if r["family"] == "caption"), key=lambda r: r["f1"])[:3]
    result["failures"] = [{k: r[k] for k in ("id", "family", "question", "answer", "pred", "features")}
                          for r in rng.sample(fails, min(12, len(fails))) + fails_cap]
    result["in_distribution"] = in_distribution()
    if args.ask_sample:
        result["ask_check"] = ask_check(data, rows, args.ask_sample, args.model, seed=0)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(result, args.title))
    print(json.dumps({"per_family": result["per_family"], "overall_without_caption":
                      result["overall_without_caption"], "eval": result.get("eval"),
                      "ask_check": {k: v for k, v in result.get("ask_check", {}).items() if k != "items"}}, indent=1))


if __name__ == "__main__":
    main()
