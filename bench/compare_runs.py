"""Compare two `videopanda bench` JSON files measurement by measurement: did a change keep the speed?

Rows are matched on what they measure (section, config, impl, llm, decoding, batch); each match gives the before and
after time, after/before, and whether it is within the tolerance. Run both benchmarks on one machine, one after the
other, so that only the code differs.

A side may be several files, comma-separated: rounds of the same code, each in its own process (alternate before and
after). On an H100 one process of the same code ran up to 35% slower than the next
(results/h100_stab_before_after_rounds.json), so one round each is not enough to judge 5%. A side's time is then the
median over its rounds, and the table also gives each side's fastest and slowest round.

Usage: python bench/compare_runs.py BEFORE.json[,BEFORE2.json...] AFTER.json[,AFTER2.json...] [--tolerance 0.05]
           [--label-before 9ca132d] [--label-after HEAD] [--out FILE.json]
The output holds the table and every input file whole.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

KEYS = ("config", "impl", "llm", "decoding", "batch")
# the time each section's rows report, lower is better (generate: the whole 64-token answer)
TIME = {"stab": "median_ms", "vit": "median_ms", "generate": "e2e_ms", "eval": "median_ms"}


def rows_by_key(run: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(section, *(row.get(k) for k in KEYS)): row
            for section in TIME if isinstance(run.get(section), dict) for row in run[section]["rows"]}


def times(runs: list[dict[str, Any]]) -> dict[tuple, list[float]]:
    """Each measurement's time in every round that has it."""
    found: dict[tuple, list[float]] = {}
    for run in runs:
        for key, row in rows_by_key(run).items():
            if row.get(TIME[key[0]]) is not None:
                found.setdefault(key, []).append(row[TIME[key[0]]])
    return found


def compare(before: list[dict[str, Any]], after: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """One row per measurement on both sides: before, after (medians over rounds), ratio, within tolerance."""
    old, new = times(before), times(after)
    single = (rows_by_key(before[0]), rows_by_key(after[0])) if len(before) == len(after) == 1 else None
    table = []
    for key in old.keys() & new.keys():
        a, b = statistics.median(old[key]), statistics.median(new[key])
        ratio = b / a
        row = {"section": key[0], **{k: v for k, v in zip(KEYS, key[1:]) if v is not None}, "metric": TIME[key[0]],
               "before": round(a, 4), "after": round(b, 4), "after_over_before": round(ratio, 3),
               "within": ratio <= 1 + tolerance}
        if len(old[key]) > 1 or len(new[key]) > 1:
            row.update(rounds_before=len(old[key]), rounds_after=len(new[key]),
                       range_before=[min(old[key]), max(old[key])], range_after=[min(new[key]), max(new[key])])
        if single and "answers_per_s" in single[0][key]:
            row.update(answers_per_s_before=single[0][key]["answers_per_s"],
                       answers_per_s_after=single[1][key]["answers_per_s"])
        table.append(row)
    return sorted(table, key=lambda r: tuple(str(r.get(k, "")) for k in ("section", *KEYS)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", help="bench JSON file(s) of the old code, comma-separated")
    p.add_argument("after", help="bench JSON file(s) of the new code, comma-separated")
    p.add_argument("--tolerance", type=float, default=0.05, help="slowdown allowed, as a fraction (default 0.05)")
    p.add_argument("--label-before", default="before")
    p.add_argument("--label-after", default="after")
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args()
    try:
        before, after = ([json.loads(Path(f).read_text()) for f in files.split(",")] for files in (args.before,
                                                                                                     args.after))
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read a bench JSON file: {err}") from None
    table = compare(before, after, args.tolerance)
    if not table:
        raise SystemExit("error: the two files share no measurement (other sections, configs or batch sizes?)")
    for row in table:
        what = " ".join(str(row[k]) for k in ("section", *KEYS) if k in row)
        spread = (f"  (rounds {row['range_before'][0]:.3f}-{row['range_before'][1]:.3f} -> "
                  f"{row['range_after'][0]:.3f}-{row['range_after'][1]:.3f})" if "range_before" in row else "")
        print(f"{what:45s} {row['before']:10.3f} -> {row['after']:10.3f} {row['metric']}  "
              f"x{row['after_over_before']:.3f}  {'ok' if row['within'] else 'SLOWER'}{spread}")
    if args.out:
        report = {"before": args.label_before, "after": args.label_after, "tolerance": args.tolerance,
                  "all_within": all(r["within"] for r in table), "table": table,
                  "runs": {args.label_before: before if len(before) > 1 else before[0],
                           args.label_after: after if len(after) > 1 else after[0]}}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
