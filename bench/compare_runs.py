"""Compare two `videopanda bench` JSON files measurement by measurement: did a change keep the speed?

Rows are matched on what they measure (section, config, impl, llm, decoding, batch); each match gives the before and
after time, after/before, and whether it is within the tolerance. Run both benchmarks on one machine, one after the
other, so that only the code differs.

Usage: python bench/compare_runs.py BEFORE.json AFTER.json [--tolerance 0.05] [--label-before 9ca132d]
           [--label-after HEAD] [--out FILE.json]
The output holds the table and both input files whole.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KEYS = ("config", "impl", "llm", "decoding", "batch")
# the time each section's rows report, lower is better (generate: the whole 64-token answer)
TIME = {"stab": "median_ms", "vit": "median_ms", "generate": "e2e_ms", "eval": "median_ms"}


def rows_by_key(run: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    return {(section, *(row.get(k) for k in KEYS)): row
            for section in TIME if isinstance(run.get(section), dict) for row in run[section]["rows"]}


def compare(before: dict[str, Any], after: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """One row per measurement in both files: before, after, ratio (after/before time) and within tolerance."""
    old, new = rows_by_key(before), rows_by_key(after)
    table = []
    for key in old.keys() & new.keys():
        section, metric = key[0], TIME[key[0]]
        a, b = old[key].get(metric), new[key].get(metric)
        if a is None or b is None:
            continue
        ratio = b / a
        row = {"section": section, **{k: v for k, v in zip(KEYS, key[1:]) if v is not None}, "metric": metric,
               "before": a, "after": b, "after_over_before": round(ratio, 3), "within": ratio <= 1 + tolerance}
        if "answers_per_s" in old[key]:
            row.update(answers_per_s_before=old[key]["answers_per_s"], answers_per_s_after=new[key]["answers_per_s"])
        table.append(row)
    return sorted(table, key=lambda r: tuple(str(r.get(k, "")) for k in ("section", *KEYS)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--tolerance", type=float, default=0.05, help="slowdown allowed, as a fraction (default 0.05)")
    p.add_argument("--label-before", default="before")
    p.add_argument("--label-after", default="after")
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args()
    try:
        before, after = json.loads(args.before.read_text()), json.loads(args.after.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read a bench JSON file: {err}") from None
    table = compare(before, after, args.tolerance)
    if not table:
        raise SystemExit("error: the two files share no measurement (other sections, configs or batch sizes?)")
    for row in table:
        what = " ".join(str(row[k]) for k in ("section", *KEYS) if k in row)
        print(f"{what:45s} {row['before']:10.3f} -> {row['after']:10.3f} {row['metric']}  "
              f"x{row['after_over_before']:.3f}  {'ok' if row['within'] else 'SLOWER'}")
    if args.out:
        report = {"before": args.label_before, "after": args.label_after, "tolerance": args.tolerance,
                  "all_within": all(r["within"] for r in table), "table": table,
                  "runs": {args.label_before: before, args.label_after: after}}
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
