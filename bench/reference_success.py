"""Closed-loop success of the shipped reference checkpoints on MetaWorld MT10.

    python bench/reference_success.py --episodes 50 --workers 2

Evaluates each checkpoint on the same tasks and seeds (evaluation seeds, disjoint from the
demonstration seeds), prints one markdown table (per task: success with Wilson 95% intervals)
and writes bench/results/reference_success.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"chunk (L1 regression)": "checkpoints/reference-small-chunk",
               "tokens (autoregressive)": "checkpoints/reference-small-tokens"}


def main() -> None:
    from vla_compress.evaluate.rollout import PolicySpec, evaluate
    from vla_compress.fileio import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--heads", default="chunk,tokens", help="which checkpoints: chunk,tokens")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/reference_success.json")
    args = ap.parse_args()

    results = {}
    for label, path in CHECKPOINTS.items():
        if label.split()[0] not in args.heads.split(","):
            continue
        t0 = time.time()
        done = [0]

        def progress(r, n, total, _label=label):
            done[0] += r.success
            if n % 25 == 0 or n == total:
                print(f"  {_label}: {n}/{total} episodes, {done[0]} successes, {time.time() - t0:.0f}s", flush=True)

        res = evaluate(PolicySpec("torch", str(ROOT / path)), "metaworld-mt10", episodes=args.episodes,
                       workers=args.workers, threads_per_worker=1, on_episode=progress)
        res["checkpoint"] = path
        results[label] = res
    if not results:
        raise SystemExit(f"--heads {args.heads!r} selects no checkpoint")

    labels = list(results)
    tasks = list(next(iter(results.values()))["per_task"])
    print(f"\n| task | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for t in tasks + ["mean"]:
        cells = []
        for lb in labels:
            r = results[lb]
            if t == "mean":
                lo, hi = r["pooled"]["ci95"]
                cells.append(f"**{r['mean_success']:.1%}** [{lo:.0%}, {hi:.0%}]")
            else:
                p = r["per_task"][t]
                cells.append(f"{p['successes']}/{p['episodes']} ({p['success_rate']:.0%}) [{p['ci95'][0]:.0%}, {p['ci95'][1]:.0%}]")
        print(f"| {t} | " + " | ".join(cells) + " |")
    for lb in labels:
        r = results[lb]
        print(f"{lb}: wall {r['wall_s']:.0f} s with {r['workers']} workers; policy step mean {r['latency_ms']['mean_per_inference']:.1f} ms")
    # keep per-episode outcomes (needed for paired comparisons later) but drop nothing else
    write_json(args.out, {"episodes_per_task": args.episodes, "results": results})
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
