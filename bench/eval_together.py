"""Two policies' closed-loop evaluations one after the other vs together on the same workers.

    python bench/eval_together.py --artifact runs/search-reference/stages/export-cut0-onnx-int8-dynamic/artifact \\
        --tasks reach-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3,peg-insert-side-v3 --episodes 6

The shipped reference-small-chunk in torch and an ONNX artifact of it (any export; the int8 one
a search or the demo wrote), on the same tasks and seeds, with the local executor (`--workers`
spawned processes, one thread each):
  separate   evaluate() of the baseline, then evaluate() of the artifact (what compress did before:
             a worker pool per evaluation, the second starting when the first's last episode ends)
  together   evaluate_many() of both (what compress does now: one pool, their episodes interleaved)
run in the order separate, together, together, separate (the machine's load drifts: compare each
pair's mean). Checks that every run's per-episode outcomes equal the first's; writes
bench/results/eval_together.json. On 2 cores the only gains possible are the second pool's start and
the tail of the first evaluation (workers idle while its last episodes finish).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def outcomes(r: dict) -> list:
    return [(e["task"], e["seed"], e["success"], e["steps"], e["inferences"]) for e in r["episodes"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "reference-small-chunk"))
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_together.json"))
    a = ap.parse_args()
    from vla_compress.evaluate.executor import LocalExecutor
    from vla_compress.evaluate.rollout import PolicySpec, evaluate, evaluate_many
    from vla_compress.fileio import write_json
    from vla_compress.notices import route_third_party_output

    route_third_party_output()
    tasks = a.tasks.split(",")
    specs = [PolicySpec("torch", a.checkpoint), PolicySpec("onnxruntime", str(Path(a.artifact).resolve()),
                                                           {"threads": 1})]
    ex = LocalExecutor(a.workers)
    runs, ref = [], None
    for mode in ("separate", "together", "together", "separate"):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        if mode == "separate":
            res = [evaluate(s, "metaworld-mt10", tasks, a.episodes, threads_per_worker=1, executor=ex) for s in specs]
        else:
            res = evaluate_many(specs, "metaworld-mt10", tasks, a.episodes, threads_per_worker=1, executor=ex)
        wall = time.perf_counter() - t0
        got = [outcomes(r) for r in res]
        ref = ref or got
        n = sum(len(g) for g in got)
        runs.append({"mode": mode, "wall_s": round(wall, 1), "episodes": n, "episodes_per_s": round(n / wall, 3),
                     "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
                     "successes": [sum(e[2] for e in g) for g in got], "identical_outcomes": got == ref})
        r = runs[-1]
        print(f"{mode:9s} wall {r['wall_s']:7.1f} s  {r['episodes_per_s']:.3f} episodes/s  successes {r['successes']}"
              f"  load {r['load_before']} -> {r['load_after']}  identical {r['identical_outcomes']}", flush=True)
    sep = [r["wall_s"] for r in runs if r["mode"] == "separate"]
    tog = [r["wall_s"] for r in runs if r["mode"] == "together"]
    ratio = (sum(sep) / len(sep)) / (sum(tog) / len(tog))
    print(f"separate / together wall (means of 2): {ratio:.2f}x")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    write_json(a.out, {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "commit": head,
                       "tasks": tasks, "episodes_per_task": a.episodes, "workers": a.workers, "runs": runs,
                       "separate_over_together": round(ratio, 3)})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
