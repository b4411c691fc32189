"""GGUF (llama.cpp hybrid) vs torch vs fp32 ONNX on a shipped reference checkpoint: parity on
held-out frames and per-step latency, measured in one run, side by side.

    python bench/gguf_reference.py --checkpoint checkpoints/reference-small-chunk \
        --dataset .cache/demos/mt10-corner128 --precisions q8_0,q4_k_m

Exports an fp32 ONNX artifact and one GGUF artifact per precision under --work, validates each
on the same held-out frames (the checkpoint's validation episodes), then times every policy on
those frames with the profiler's `measure_policy` (1 thread each, interleaved rounds so a busy
machine slows them alike), prints a markdown table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig
    from vla_compress.export.observations import export_observations
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.fileio import write_json
    from vla_compress.models import load_vla
    from vla_compress.profile.measure import measure_policy
    from vla_compress.runtime.policy import TorchPolicy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/reference-small-chunk")
    ap.add_argument("--dataset", type=Path, default=ROOT / ".cache/demos/mt10-corner128")
    ap.add_argument("--precisions", default="q8_0,q4_k_m", help="GGUF precisions (f32,f16,q8_0,q4_k_m,q4_0)")
    ap.add_argument("--samples", type=int, default=16, help="held-out frames to validate and time on")
    ap.add_argument("--steps", type=int, default=60, help="timed policy steps per policy (split in rounds)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache/gguf-bench")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    vla = load_vla(args.checkpoint)
    head = vla.cfg.head
    obs = export_observations(vla, args.checkpoint, args.dataset, args.samples, 2, seed=0)
    print(f"validation: {obs.source}")
    name = args.checkpoint.name
    arts = {"onnx fp32": export(vla, OnnxExportConfig(), args.work / f"{name}-onnx-fp32", example=obs.calibration,
                                source=args.checkpoint)}
    for p in args.precisions.split(","):
        arts[f"gguf {p}"] = export(vla, GgufExportConfig(precision=p), args.work / f"{name}-gguf-{p}",
                                   example=obs.calibration, source=args.checkpoint)
    rows = {"torch fp32": {"runtime": "torch"}}
    for label, art in arts.items():
        report = validate(art, vla, obs.validation, threads=args.threads)
        rows[label] = {"runtime": "onnxruntime" if art.format == "onnx" else "llama.cpp + onnxruntime",
                       "artifact": str(art.path), "status": art.status, "parity": report.to_dict(),
                       "bytes": {f: m["bytes"] for f, m in art.files.items() if f.endswith((".onnx", ".gguf"))}}
        if art.format == "gguf":
            rows[label]["tensor_types"] = art.manifest["gguf"]["tensor_types"]
    policies = {"torch fp32": TorchPolicy(vla)}
    for label, art in arts.items():
        runtime = "onnx" if art.format == "onnx" else "llama.cpp"
        policies[label] = PolicySpec(runtime, str(art.path), {"threads": args.threads}).build()
    lat: dict[str, list[float]] = {k: [] for k in policies}
    parts: dict[str, list[dict]] = {k: [] for k in policies}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):  # interleaved: load from other jobs hits every policy alike
        for label, pol in policies.items():
            m = measure_policy(pol, obs.validation, steps=per_round, warmup=3)
            lat[label] += m.latencies_ms
            parts[label].append(m.breakdown_ms)
    for label in policies:
        ms = np.asarray(lat[label])
        rows[label]["latency_ms"] = {"p50": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                     "mean": float(ms.mean()), "n": int(ms.size)}
        keys = {k for b in parts[label] for k in b}
        rows[label]["breakdown_ms"] = {k: float(np.median([b[k] for b in parts[label] if k in b])) for k in sorted(keys)}
    print(f"\n{name} ({head} head), {len(obs.validation)} held-out frames, {args.threads} thread(s)\n")
    print("| policy | backbone file | max abs | cosine | action L1 mean | p50 ms | p90 ms | breakdown (median ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        p = r.get("parity")
        size = next((f"{v / 1e6:.2f} MB" for f, v in r.get("bytes", {}).items() if f.endswith(".gguf")), "-")
        par = f"{p['max_abs']:.3g} | {p['cosine']:.6f} | {p['action_l1_mean']:.3g}" if p else "- | - | -"
        bd = ", ".join(f"{k} {v:.2f}" for k, v in r["breakdown_ms"].items())
        print(f"| {label} | {size} | {par} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p90']:.2f} | {bd} |")
    out = args.out or ROOT / f"bench/results/gguf_{name}.json"
    write_json(out, {"checkpoint": str(args.checkpoint), "head": head, "validation": obs.source,
                     "threads": args.threads, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
