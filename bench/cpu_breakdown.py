"""Where an ONNX artifact's policy step goes on this CPU: ONNX Runtime's own per-operator profile,
grouped by operator type, against the compute roofline measured in the same process.

For each artifact (a directory with artifact.json, format onnx):
  - wall p50 of the network call (session.run) and of the whole policy step (OnnxRuntimePolicy.infer:
    preprocess + network + un-normalise), 1 thread, on held-out frames;
  - ONNX Runtime's profiler (SessionOptions.enable_profiling) over the same frames: kernel time per
    operator type per step, node count, share of the kernel total; profiling adds a few µs per node,
    so the kernel total exceeds the unprofiled wall time and the shares are what to read;
  - the roofline: the step's FLOPs (torch's FlopCounterMode on the artifact's own model, rebuilt from
    its files, so pruning shows) at the int8 and fp32 GEMM throughput ONNX Runtime itself reaches here
    on a large square MatMul (1 thread), i.e. the time the step would take if every FLOP ran at peak.

    python bench/cpu_breakdown.py ART [ART ...] [--samples 32] [--out bench/results/cpu_breakdown.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MATMUL_OPS = {"MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
              "FusedMatMul", "MatMulNBits", "Conv", "ConvInteger", "QLinearConv", "MultiHeadAttention", "Attention"}


def gemm_peak(precision: str, n: int = 1024, reps: int = 20) -> float:
    """ONNX Runtime's best-of GEMM throughput (TFLOPS / TOPS) on an n x n x n MatMul, 1 thread:
    fp32 MatMul, or int8 as the dynamic quantizer writes it (DynamicQuantizeMatMul)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "mm.onnx"
        onnx.save(model, str(src))
        path = src
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            path = Path(d) / "mm-int8.onnx"
            quantize_dynamic(str(src), str(path), weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal((n, n)).astype(np.float32)}
    sess.run(None, feed)
    best = min(_timed(lambda: sess.run(None, feed)) for _ in range(reps))
    return 2 * n**3 / best / 1e12


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def breakdown(art_dir: Path, held: list[dict], rounds: int) -> dict:
    from onnx_graph_forms import profile_ops

    from vla_compress.export.artifact import Artifact
    from vla_compress.profile.counting import count_policy_step
    from vla_compress.profile.runner import _artifact_model
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    art = Artifact.load(art_dir)
    if art.format != "onnx" or list(art.manifest["graphs"]) != ["policy_step"]:
        raise SystemExit(f"{art_dir}: cpu_breakdown profiles single-graph ONNX artifacts (a regression head)")
    policy = OnnxRuntimePolicy(art_dir, threads=1)
    sess = policy.graphs.sessions["policy_step"]
    names = [i.name for i in sess.get_inputs()]
    feeds = [{n: policy.processor([o])[n] for n in names} for o in held]
    for o in held:
        policy.infer(o)
    step, net = [], []
    for _ in range(rounds):
        for o, f in zip(held, feeds):
            step.append(_timed(lambda: policy.infer(o)))
            net.append(_timed(lambda: sess.run(["actions"], f)))
    by_op, count = profile_ops(art.file("policy_step.onnx"), feeds)
    total = sum(by_op.values())
    vla, _ = _artifact_model(art)
    flops = count_policy_step(vla).flops if vla is not None else None
    ops = [{"op": op, "ms_per_step": round(ms, 4), "nodes": count[op], "share": round(ms / total, 4),
            "matmul_like": op in MATMUL_OPS} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])]
    return {"artifact": str(art_dir), "precision": art.precision,
            "optimized": art.manifest["graphs"]["policy_step"].get("optimized"),
            "network_p50_ms": round(float(np.median(net)) * 1e3, 3), "step_p50_ms": round(float(np.median(step)) * 1e3, 3),
            "profiled_kernel_ms": round(total, 3), "nodes_per_step": sum(count.values()),
            "matmul_like_share": round(sum(o["share"] for o in ops if o["matmul_like"]), 4),
            "flops": flops, "ops": ops}


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from cpu_peers import observations
    from onnx_graph_forms import bench_args

    from vla_compress.fileio import write_json
    from vla_compress.models import load_vla

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path, nargs="+")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/reference-small-chunk",
                    help="where the held-out frames' camera setup comes from")
    args = bench_args(ap, "cpu_breakdown.json", rounds=5)
    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_before = os.getloadavg()
    _, held, source = observations(load_vla(args.checkpoint), args.work / "demos", args.samples, seed=0)
    peaks = {"int8_tops": round(gemm_peak("int8"), 4), "fp32_tflops": round(gemm_peak("fp32"), 4)}
    rows = []
    for a in args.artifacts:
        r = breakdown(a, held, args.rounds)
        if r["flops"]:
            r["roofline_ms"] = {"int8": round(r["flops"] / (peaks["int8_tops"] * 1e12) * 1e3, 3),
                                "fp32": round(r["flops"] / (peaks["fp32_tflops"] * 1e12) * 1e3, 3)}
        rows.append(r)
        print(f"\n{a}: {r['precision']}, network p50 {r['network_p50_ms']:.2f} ms, step p50 {r['step_p50_ms']:.2f} ms, "
              f"{r['nodes_per_step']} nodes, {r['flops'] / 1e9 if r['flops'] else float('nan'):.3f} GFLOP, roofline "
              f"{r.get('roofline_ms')} ms; matmul-like kernels {100 * r['matmul_like_share']:.0f}% of kernel time")
        print("| op | ms/step (profiled) | nodes | share |\n|---|---|---|---|")
        for o in r["ops"][:12]:
            print(f"| {o['op']} | {o['ms_per_step']:.3f} | {o['nodes']} | {100 * o['share']:.1f}% |")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"\nONNX Runtime GEMM peaks here (1 thread, 1024^3): {peaks}")
    write_json(args.out, {"commit": commit, "observations": source, "peaks": peaks, "threads": 1,
                          "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
