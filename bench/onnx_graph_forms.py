"""The ONNX graph forms of one model side by side on ONNX Runtime's CPU provider: fp32, dynamic and
static INT8 in each of their variants, plain and fused for ONNX Runtime (optimize "ort"), so the
choices in OnnxExportConfig's defaults and the CPU recipes can be checked on this machine.

Every form is exported by vla-compress's own ONNX exporter from one fp32 trace and validated against
torch (parity status in the JSON); each is timed as the network call alone (session.run, 1 thread) on
the same held-out frames, in interleaved rounds (order alternating). `dq_share` is the share of
ONNX Runtime's profiled kernel time spent in DequantizeLinear: what per-channel Q/DQ costs on this
provider, which folds a weight's DequantizeLinear into QLinearMatMul only for per-tensor scales.

    python bench/onnx_graph_forms.py [--checkpoint DIR] [--rounds 8] [--out bench/results/onnx_graph_forms.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name -> OnnxExportConfig fields (on top of the fp32 trace)
FORMS: dict[str, dict] = {
    "fp32": {},
    "fp32, optimize ort": {"optimize": "ort"},
    "int8-dynamic, Conv quantized too": {"precision": "int8-dynamic", "quantize_conv": True},
    "int8-dynamic (default: Conv fp32)": {"precision": "int8-dynamic"},
    "int8-dynamic, optimize ort": {"precision": "int8-dynamic", "optimize": "ort"},
    "int8-static per-channel, int8 activations (default; TensorRT's form)": {"precision": "int8-static"},
    "int8-static per-tensor, int8 activations": {"precision": "int8-static", "per_channel": False},
    "int8-static per-tensor, uint8 activations": {"precision": "int8-static", "per_channel": False,
                                                  "activation_type": "uint8"},
    "int8-static per-tensor, uint8 activations, optimize ort": {"precision": "int8-static", "per_channel": False,
                                                                "activation_type": "uint8", "optimize": "ort"},
}


def profile_ops(path: Path, feeds: list[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """(ms per call, nodes per call) per operator type from ONNX Runtime's profiler (1 thread)."""
    import onnxruntime as ort

    from vla_compress.runtime.onnxruntime_policy import session_options

    with tempfile.TemporaryDirectory() as d:
        so = session_options(1)
        so.enable_profiling, so.profile_file_prefix = True, str(Path(d) / "p")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for f in feeds:
            sess.run(["actions"], f)
        events = json.loads(Path(sess.end_profiling()).read_text())
    ms: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ms[e["args"]["op_name"]] += e["dur"] / 1e3 / len(feeds)
            nodes[e["args"]["op_name"]] += 1
    return dict(ms), {k: v // len(feeds) for k, v in nodes.items()}


def bench_args(ap: argparse.ArgumentParser, out: str, rounds: int) -> argparse.Namespace:
    """The options both ONNX CPU scripts take (held-out frames, rounds, cache, output), parsed."""
    ap.add_argument("--samples", type=int, default=32, help="held-out frames timed")
    ap.add_argument("--rounds", type=int, default=rounds, help="timed passes over the frames")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache/bench/cpu-peers", help="demos and artifacts cache")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results" / out)
    return ap.parse_args()


def main() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import onnxruntime as ort
    from cpu_peers import observations

    from vla_compress.export import export, validate
    from vla_compress.export.family import get_export_family
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.fileio import write_json
    from vla_compress.models import load_vla
    from vla_compress.runtime.onnxruntime_policy import session_options

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/reference-small-chunk")
    args = bench_args(ap, "onnx_graph_forms.json", rounds=8)
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()
    vla = load_vla(args.checkpoint).eval()
    cal, held, source = observations(vla, args.work / "demos", args.samples, seed=0)
    out_dir = args.work / "graph-forms" / args.checkpoint.name
    fp32 = export(vla, OnnxExportConfig(), out_dir / "fp32", example=cal[:2], source=args.checkpoint)
    validate(fp32, vla, held)
    processor = get_export_family(vla.family).load_processor(fp32.path)
    rows, sessions, feeds = [], {}, None
    for i, (name, fields) in enumerate(FORMS.items()):
        art = fp32 if not fields else export(vla, OnnxExportConfig(**fields), out_dir / f"form{i}", base=fp32,
                                             calibration=cal)
        rep = validate(art, vla, held)
        path = art.file(art.manifest["graphs"]["policy_step"]["file"])
        sess = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        if feeds is None:
            names = [x.name for x in sess.get_inputs()]
            feeds = [{n: processor([o])[n] for n in names} for o in held]
        outs = [sess.run(["actions"], f)[0] for f in feeds]  # warm-up + outputs
        sessions[name] = sess
        ops, _ = profile_ops(path, feeds)
        rows.append({"form": name, "config": fields, "status": art.status, "parity_action_l1": rep.action_l1_mean,
                     "ops": art.manifest["graphs"]["policy_step"]["ops"],
                     "fusions": (art.manifest["graphs"]["policy_step"].get("optimized") or {}).get("fusions"),
                     "dq_share": round(ops.get("DequantizeLinear", 0.0) / sum(ops.values()), 4),
                     "profiled_ms_by_op": {k: round(v, 4) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12]},
                     "_outs": outs, "_lat": []})
        print(f"built {name}: {art.status}, parity L1 {rep.action_l1_mean:.4f}", flush=True)
    for r in range(args.rounds):
        order = rows if r % 2 == 0 else rows[::-1]
        for row in order:
            sess = sessions[row["form"]]
            for f in feeds:
                t0 = time.perf_counter()
                sess.run(["actions"], f)
                row["_lat"].append((time.perf_counter() - t0) * 1e3)
    ref = rows[0]["_outs"]
    for row in rows:  # the graphs output normalised actions: L1 in [-1, 1] units
        lat = np.asarray(row.pop("_lat"))
        outs = row.pop("_outs")
        row.update(p50_ms=round(float(np.percentile(lat, 50)), 3), p90_ms=round(float(np.percentile(lat, 90)), 3),
                   action_l1_vs_fp32=float(np.mean([np.abs(a - b).mean() for a, b in zip(outs, ref)])))
    base = rows[0]["p50_ms"]
    print("\n| form | network p50 ms | vs fp32 | action L1 vs fp32 | DequantizeLinear share |\n|---|---|---|---|---|")
    for row in rows:
        row["speedup_vs_fp32"] = round(base / row["p50_ms"], 3)
        print(f"| {row['form']} | {row['p50_ms']:.2f} | {row['speedup_vs_fp32']:.2f}x | {row['action_l1_vs_fp32']:.4f} | "
              f"{100 * row['dq_share']:.0f}% |")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    write_json(args.out, {"checkpoint": str(args.checkpoint), "commit": commit, "observations": source,
                          "threads": 1, "rounds": args.rounds, "onnxruntime": ort.__version__,
                          "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
