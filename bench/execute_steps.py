"""How many actions of each predicted chunk to execute before re-planning: closed-loop success of
reference-small-chunk with execute_steps = 4 (the whole chunk, as shipped), 2 and 1, paired on the
same MetaWorld tasks and seeds.

    python bench/execute_steps.py --episodes 20 --workers 2 --tasks reach-v3,push-v3,button-press-topdown-v3,window-open-v3,drawer-open-v3

Prints one table (per task: success with Wilson 95% intervals; pooled paired difference against the
whole-chunk run with Newcombe's interval) and writes bench/results/execute_steps.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from vla_compress.evaluate.gate import pair_outcomes, paired_difference_interval
    from vla_compress.evaluate.rollout import PolicySpec, evaluate
    from vla_compress.evaluate.stats import wilson_interval
    from vla_compress.fileio import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/reference-small-chunk")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", default="reach-v3,push-v3,button-press-topdown-v3,window-open-v3,drawer-open-v3")
    ap.add_argument("--steps", default="4,2,1", help="execute_steps values; the first is the comparison base")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/execute_steps.json")
    args = ap.parse_args()

    tasks = args.tasks.split(",")
    values = [int(v) for v in args.steps.split(",")]
    runs = {}
    for k in values:
        t0 = time.time()
        spec = PolicySpec("torch", str(ROOT / args.checkpoint), {"execute_steps": k, "name": f"execute-{k}"})
        runs[k] = evaluate(spec, "metaworld-mt10", tasks=tasks, episodes=args.episodes, workers=args.workers,
                           threads_per_worker=1)
        print(f"execute_steps={k}: {runs[k]['pooled']} in {time.time() - t0:.0f}s", flush=True)

    base = values[0]
    print("\n| task | " + " | ".join(f"execute {k} of 4" for k in values) + " |")
    print("|---|" + "---|" * len(values))
    for t in tasks + ["pooled"]:
        cells = []
        for k in values:
            if t == "pooled":
                eps = runs[k]["episodes"]
            else:
                eps = [e for e in runs[k]["episodes"] if e["task"] == t]
            s, n = sum(e["success"] for e in eps), len(eps)
            lo, hi = wilson_interval(s, n)
            cell = f"{s}/{n} [{lo:.0%}, {hi:.0%}]"
            if t == "pooled" and k != base:
                d, dlo, dhi = paired_difference_interval(pair_outcomes(runs[base]["episodes"], eps))
                cell += f", {d * 100:+.0f} [{dlo * 100:+.1f}, {dhi * 100:+.1f}] pts"
            cells.append(cell)
        print(f"| {t} | " + " | ".join(cells) + " |")
    write_json(args.out, {"checkpoint": args.checkpoint, "tasks": tasks, "episodes_per_task": args.episodes,
                          "runs": {str(k): runs[k] for k in values}})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
