"""Estimated vs measured policy-step latency on THIS host, before and after calibration.

For reference-small (the shipped checkpoints/reference-small-chunk) and the ~100M and ~500M
reference presets (random weights, built here and saved under .cache/latency-bench/), each run
in fp32 torch and as an INT8 (dynamic) ONNX Runtime artifact, all with 1 thread:

1. describe this host (bandwidth, matmul throughput, op overhead; 1 torch thread, like the runs)
   and write the `local-host` profile (hardware/local-host.yaml);
2. measure every policy step here and estimate it on that profile *uncalibrated* (a copy of the
   profile in a temporary folder, without any calibration beside it);
3. calibrate: `profile_targets(..., calibrate=True)` fits the efficiency factors per runtime on the
   measured runs and writes hardware/calibration/local-host.yaml; estimate again, calibrated.

The calibrated estimates are in-sample: the fit saw these same runs (per-component samples of all
three models of a runtime). A leave-one-model-out column refits each runtime's factors without the
model it then estimates (the same calibrate() and calibration file, on a temporary copy of the
profile), for an out-of-sample view.

Prints a table and writes bench/results/latency_estimates.json. Usage:
    python3 bench/latency_estimates.py [--steps 8 --warmup 2] [--models reference-small,reference-100m]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "latency-bench"
OUT = ROOT / "bench" / "results" / "latency_estimates.json"
SMALL = ROOT / "checkpoints" / "reference-small-chunk"
SMALL_ONNX = ROOT / ".cache" / "exports" / "reference-small-chunk" / "onnx-int8-dynamic"
MODELS = ("reference-small", "reference-100m", "reference-500m")
TOLERANCE = 0.30


def checkpoint(name: str) -> Path:
    """The fp32 checkpoint of `name`: the shipped one for reference-small, else random weights built once."""
    if name == "reference-small":
        return SMALL
    path = CACHE / name
    if not (path / "config.json").is_file():
        from vla_compress.models.reference import ReferenceVLA

        print(f"building {name} with random weights -> {path}", flush=True)
        ReferenceVLA.from_preset(name).save_pretrained(path)
    return path


def _usable(path: Path) -> bool:
    from vla_compress.export.artifact import Artifact

    return (path / "artifact.json").is_file() and Artifact.load(path).status != "failed"


def onnx_int8(name: str, ckpt: Path) -> Path:
    """An INT8 (dynamic) ONNX artifact of `ckpt`: an existing one that passed validation (the export
    matrix's, for reference-small), else exported once here with `vla-compress export` (reused after)."""
    if name == "reference-small" and _usable(SMALL_ONNX):
        return SMALL_ONNX
    path = CACHE / f"{name}-onnx-int8-dynamic"
    if not _usable(path):
        print(f"exporting {ckpt} -> {path}", flush=True)
        subprocess.run(["vla-compress", "export", str(ckpt), "-f", "onnx", "-p", "int8-dynamic", "--out", str(path),
                        "--samples", "2", "--calibration-samples", "2", "--threads", "1"], check=True)
    return path


def rel(est: float | None, meas: float | None) -> float | None:
    return None if est is None or not meas else est / meas - 1


def leave_one_out(rows: list[dict], profile_path: Path, runtime: str, prec: str) -> None:
    """Fill rows[i]["loo_ms"/"loo_error"]: model i estimated with factors fitted on the others only."""
    from types import SimpleNamespace

    from vla_compress.hardware import load_hardware
    from vla_compress.profile.calibrate import calibrate
    from vla_compress.profile.estimate import estimate
    from vla_compress.profile.runner import resolve_target
    from vla_compress.profile.trace import trace_policy_step

    mine = [r for r in rows if r["runtime"] == runtime]
    traces = {r["model"]: trace_policy_step(resolve_target(r["target"], threads=1).vla) for r in mine}
    for r in mine:
        others = [(traces[o["model"]], SimpleNamespace(breakdown_ms=o["measured_breakdown_ms"],
                                                       p50_ms=o["measured_p50_ms"]), prec, o["model"])
                  for o in mine if o is not r]
        if not others:
            continue
        with tempfile.TemporaryDirectory(prefix="latency-loo-") as d:
            copy = Path(shutil.copy2(profile_path, Path(d) / "local-host.yaml"))
            fit, _ = calibrate(load_hardware(copy, calibrated=False), others, runtime=runtime)
            ms = estimate(traces[r["model"]], load_hardware(copy), prec, runtime).latency_s * 1e3
        r.update(loo_ms=ms, loo_error=rel(ms, r["measured_p50_ms"]),
                 loo_fit={k: v for k, v in fit.to_dict().items() if k != "samples"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed policy steps per target")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        from vla_compress.errors import ConfigError

        raise ConfigError(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")

    import torch

    torch.set_num_threads(1)  # the host description and every runtime use 1 thread
    from vla_compress.hardware import calibration_path
    from vla_compress.profile.host import describe_host, write_host_profile
    from vla_compress.profile.runner import profile_targets

    load_before = os.getloadavg()
    t0 = time.time()
    targets = {name: checkpoint(name) for name in models}
    artifacts = {name: onnx_int8(name, ckpt) for name, ckpt in targets.items()}

    print("describing this host (1 thread) -> hardware/local-host.yaml", flush=True)
    host = describe_host()
    profile_path = write_host_profile(host)
    cal = calibration_path(profile_path, "local-host")
    if cal.is_file():  # stale factors (fitted on an older host description) would leak into held parameters
        backup = CACHE / "local-host.calibration.previous.yaml"
        shutil.copy2(cal, backup)
        cal.unlink()
        print(f"moved the previous calibration aside to {backup}")
    tmp = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    uncal_profile = shutil.copy2(profile_path, tmp / "local-host.yaml")  # no calibration/ beside it

    groups = {"torch": ("fp32", {str(p): n for n, p in targets.items()}),
              "onnxruntime": ("int8", {str(p): n for n, p in artifacts.items()})}
    results, rows = {}, []
    for runtime, (prec, specs) in groups.items():
        print(f"{runtime}: measuring {len(specs)} targets ({args.warmup} warm-up + {args.steps} timed steps, "
              "1 thread), estimating, calibrating", flush=True)
        res = profile_targets(list(specs), [str(uncal_profile)], [prec], runtime=runtime, steps=args.steps,
                              warmup=args.warmup, calibrate=True, calibration_profile=str(profile_path),
                              threads=1, progress=lambda msg: print("  " + msg, flush=True))
        results[runtime] = res
        for spec, name in specs.items():
            mine = [r for r in res["rows"] if r["target"] == spec]
            meas = next(r for r in mine if r["kind"] == "measured")
            est = [r for r in mine if r["kind"] == "estimated" and not r.get("error")]
            uncal = next(r for r in est if not r["calibrated"])
            calib = next((r for r in est if r["calibrated"]), None)
            rows.append({"model": name, "runtime": runtime, "precision": prec, "target": spec,
                         "measured_p50_ms": meas["p50_ms"], "measured_p99_ms": meas["p99_ms"],
                         "measured_breakdown_ms": meas["breakdown_ms"],
                         "uncalibrated_ms": uncal["p50_ms"], "uncalibrated_error": rel(uncal["p50_ms"], meas["p50_ms"]),
                         "calibrated_ms": calib and calib["p50_ms"],
                         "calibrated_error": calib and rel(calib["p50_ms"], meas["p50_ms"])})
        print(f"{runtime}: leave-one-model-out refits", flush=True)
        leave_one_out(rows, Path(uncal_profile), runtime, prec)
    load_after = os.getloadavg()
    ok = all(r["calibrated_error"] is not None and abs(r["calibrated_error"]) <= TOLERANCE for r in rows)

    print(f"\nPolicy step (p50) on this host, 1 thread; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after ({os.cpu_count()} cores)")
    head = (f"{'model':<16}{'runtime':<18}{'measured':>10}{'uncal est':>11}{'err':>8}{'calib est':>11}{'err':>8}"
            f"{'LOO est':>11}{'err':>8}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        ce = r["calibrated_error"]
        print(f"{r['model']:<16}{r['runtime'] + ' ' + r['precision']:<18}{r['measured_p50_ms']:>8.1f}ms"
              f"{r['uncalibrated_ms']:>9.1f}ms{r['uncalibrated_error']:>+8.0%}"
              f"{(r['calibrated_ms'] or float('nan')):>9.1f}ms{(ce if ce is not None else float('nan')):>+8.0%}"
              f"{r.get('loo_ms', float('nan')):>9.1f}ms{r.get('loo_error', float('nan')):>+8.0%}")
    print(f"calibrated within ±{TOLERANCE:.0%} for every row: {'yes' if ok else 'NO'}")

    from vla_compress.fileio import write_json

    write_json(OUT, {
        "what": "estimated vs measured policy-step latency (p50) on this host; estimates on the local-host profile "
                "uncalibrated, then calibrated on these same measurements (in-sample)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python3 " + " ".join(sys.argv),
        "threads": 1, "steps": args.steps, "warmup": args.warmup, "tolerance": TOLERANCE,
        "within_tolerance_after_calibration": ok,
        "machine_load": {"loadavg_before": load_before, "loadavg_after": load_after, "cpu_count": os.cpu_count(),
                         "note": "the machine was loaded: another benchmark ran on the same cores during these "
                                 "measurements"},
        "host": host.to_dict(), "host_profile": str(profile_path.relative_to(ROOT)),
        "calibration_file": str(cal.relative_to(ROOT)),
        "fits": {rt: res.get("calibration", {}).get("fits") for rt, res in results.items()},
        "rows": rows, "wall_s": round(time.time() - t0, 1),
    })
    print(f"wrote {OUT.relative_to(ROOT)} ({time.time() - t0:.0f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
