"""Paired comparison of two closed-loop evaluations of the same suite and seeds.

    python bench/compare_success.py OLD.json NEW.json [--first N] [--out bench/results/compare.json]

Each file is what `vla-compress eval --out` or `bench/reference_success.py` writes (the latter:
the first result in it). Episodes are matched by (task, seed); prints each task's successes in
both and the paired difference with Newcombe's 95% interval, pooled and per task, and writes
the table as JSON. `--first N` keeps each task's first N evaluation seeds (compare a short run
with the first episodes of a longer one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_result(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: cannot read an evaluation result ({e})")
    if "results" in d and "episodes" not in d:  # bench/reference_success.py: {"results": {label: result}}
        d = next(iter(d["results"].values()))
    if "episodes" not in d or "per_task" not in d:
        raise SystemExit(f"error: {path}: not an evaluation result (no 'episodes'/'per_task')")
    return d


def main() -> None:
    from vla_compress.evaluate.gate import pair_outcomes, paired_difference_interval
    from vla_compress.fileio import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--first", type=int, default=0, help="only each task's first N evaluation seeds")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    old, new = load_result(args.old), load_result(args.new)
    if args.first:
        from vla_compress.evaluate.seeds import eval_seed

        for r in (old, new):
            r["episodes"] = [e for e in r["episodes"] if int(e["seed"]) - eval_seed(e["task"], 0) < args.first]
    rows = []
    tasks = list(old["per_task"])
    for task in tasks + [None]:
        pick = (lambda r: [e for e in r["episodes"] if task is None or e["task"] == task])
        c = pair_outcomes(pick(old), pick(new))
        diff, lo, hi = paired_difference_interval(c)
        rows.append({"task": task or "pooled", "episodes": c.n, "old": c.both + c.base_only,
                     "new": c.both + c.variant_only, "difference": diff, "ci95": [lo, hi]})
    protocol = {k: {"policy_options": (r.get("policy") or {}).get("options", {}), "suite_options": r.get("suite_options", {})}
                for k, r in (("old", old), ("new", new))}
    if protocol["old"] != protocol["new"]:
        print(f"note: the two runs differ in protocol: old {protocol['old']}, new {protocol['new']}")
    print("| task | old | new | paired difference [95% CI] |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['old']}/{r['episodes']} | {r['new']}/{r['episodes']} | "
              f"{r['difference'] * 100:+.1f} [{r['ci95'][0] * 100:+.1f}, {r['ci95'][1] * 100:+.1f}] |")
    if args.out:
        write_json(args.out, {"old": str(args.old), "new": str(args.new), "first": args.first or None,
                              "protocol": protocol, "rows": rows})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
