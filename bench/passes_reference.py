"""Each compression pass alone and the main combinations on reference-small-chunk, in closed loop.

Every configuration is one `vla-compress compress` run (the pipeline) with the same 5 MT10 tasks x
10 paired episodes as the torch baseline; the baseline's stages are reused from a finished run
(`--from`, default runs/export-matrix: same checkpoint, tasks, seeds). Latency is the torch CPU
policy step measured here in each run's profile stage, right after the baseline in the same
process, so each ratio is side by side. Prints one table and writes bench/results/passes_reference.json.

    python bench/passes_reference.py [--only layer-drop,int8-dynamic] [--from runs/export-matrix]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "reference-small-chunk"
DEMOS = ROOT / ".cache" / "demos" / "mt10-corner128"
TASKS = ["drawer-close-v3", "window-close-v3", "door-open-v3", "drawer-open-v3", "window-open-v3"]
REUSED = ("checkpoint", "calibration-data", "eval-baseline")

CONFIGS: dict[str, list[dict]] = {
    "layer-drop-1": [{"pass": "layer-drop", "num_layers": 1, "where": "backbone"}],
    "width-prune-mlp50": [{"pass": "width-prune", "mlp_ratio": 0.5, "where": "backbone"}],
    "visual-token-prune-50": [{"pass": "visual-token-prune", "keep_ratio": 0.5}],
    "token-merge-25": [{"pass": "token-merge", "ratio": 0.25}],
    "int8-dynamic": [{"pass": "int8-dynamic"}],
    "int4-awq-backbone": [{"pass": "int4-weight-only", "group_size": 64, "awq": True, "where": "backbone"}],
    "layer-drop-1+distill": [{"pass": "layer-drop", "num_layers": 1, "where": "backbone"},
                             {"pass": "distill", "steps": 300, "lr": 1e-4, "batch_size": 32}],
    "vtp-50+width-50+layer-drop-1": [{"pass": "visual-token-prune", "keep_ratio": 0.5},
                                     {"pass": "width-prune", "mlp_ratio": 0.5, "where": "backbone"},
                                     {"pass": "layer-drop", "num_layers": 1, "where": "backbone"}],
}


def recipe(name: str, passes: list[dict]) -> dict:
    r = {
        "name": f"passes-{name}",
        "description": f"reference-small-chunk with {name}, torch on this CPU",
        "target": {"hardware": "x86-desktop-cpu", "runtime": "torch", "precision": "fp32"},
        "passes": passes,
        "deploy": "compressed",
        "calibration": {"episodes_per_task": 1, "samples": 16, "validation_samples": 16},
        "evaluation": {"suite": "metaworld-mt10", "tasks": TASKS, "episodes": 10, "workers": 2,
                       "threads_per_worker": 1},
        "budgets": {"max_success_drop": 0.03, "confidence": 0.95},
        "profiling": {"steps": 30, "warmup": 5, "threads": 1},
    }
    if any(p["pass"] == "distill" for p in passes):
        if not DEMOS.is_dir():
            raise SystemExit(f"{name} trains on the demonstrations: collect them first ({DEMOS}, see README)")
        r["calibration"]["dataset"] = str(DEMOS)
    return r


def seed_run(src: Path, dst: Path) -> None:
    """Start `dst` with the baseline stages of `src` (their keys make the pipeline reuse them)."""
    m = json.loads((src / "manifest.json").read_text())
    m["stages"] = {k: v for k, v in m["stages"].items() if k in REUSED}
    for k in ("variants", "evaluations", "profile", "verdict"):
        m.pop(k, None)
    dst.mkdir(parents=True)
    for k in REUSED:
        shutil.copytree(src / "stages" / k, dst / "stages" / k)
    (dst / "manifest.json").write_text(json.dumps(m))


def row(name: str, run: Path) -> dict:
    m = json.loads((run / "manifest.json").read_text())
    log = m["variants"]["compressed"]["passes"]
    meas = m["profile"]["measured"]
    ev, g = m["evaluations"], m["verdict"]["gates"]["compressed"]
    return {
        "config": name, "passes": [p["config"] for p in log],
        "params": log[-1]["after"]["params_logical"], "params_base": log[0]["before"]["params_logical"],
        "flops": log[-1]["after"]["flops"], "flops_base": log[0]["before"]["flops"],
        "state_dict_bytes": log[-1]["after"]["state_dict_bytes"], "visual_tokens": log[-1]["after"]["visual_tokens"],
        "p50_ms": meas["compressed"]["latency_ms"]["p50"], "p50_ms_base": meas["baseline"]["latency_ms"]["p50"],
        "speedup": meas["compressed"]["speedup_vs_baseline"],
        "action_l1_vs_base": m["variants"]["compressed"]["parity"]["action_l1"],
        "success": ev["compressed"]["pooled"], "success_base": ev["baseline"]["pooled"],
        "gate": g, "wall_s": sum(s.get("wall_s", 0) for s in m["stages"].values() if not s.get("cached")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated config names")
    ap.add_argument("--from", dest="src", type=Path, default=ROOT / "runs" / "export-matrix")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "passes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "passes_reference.json")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CONFIGS)
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else {}
    for name in names:
        run = args.runs / name
        rfile = args.runs / f"{name}.yaml"
        args.runs.mkdir(parents=True, exist_ok=True)
        rfile.write_text(json.dumps(recipe(name, CONFIGS[name])))  # JSON is YAML
        if not (run / "manifest.json").is_file():
            seed_run(args.src, run)
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", "vla_compress.cli.main", "compress", str(CKPT), "-p", str(rfile),
                              "--out", str(run)])
        print(f"{name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if (run / "manifest.json").is_file() and "verdict" in json.loads((run / "manifest.json").read_text()):
            rows[name] = row(name, run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"tasks": TASKS, "episodes_per_task": 10, "rows": rows}, indent=1))
    print("\n| config | params | FLOPs/step | state dict | visual tokens | torch ms/step (base) | speed-up | "
          "action L1 vs original | success (base) | difference [95% paired CI] | gate -3 pts |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        s, b, g = r["success"], r["success_base"], r["gate"]
        print(f"| {r['config']} | {r['params'] / 1e6:.2f}M / {r['params_base'] / 1e6:.2f}M | {r['flops'] / 1e9:.3f}G / "
              f"{r['flops_base'] / 1e9:.3f}G | {r['state_dict_bytes'] / 1e6:.1f} MB | {r['visual_tokens']} | "
              f"{r['p50_ms']:.1f} ({r['p50_ms_base']:.1f}) | {r['speedup']:.2f}x | {r['action_l1_vs_base']:.4f} | "
              f"{s['successes']}/{s['episodes']} ({b['successes']}/{b['episodes']}) | {g['difference']:+.0%} "
              f"[{g['ci'][0]:+.1%}, {g['ci'][1]:+.1%}] | {g['verdict']} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
