"""π0.5-shaped model scaled to fit this CPU: torch fp32 vs ONNX Runtime fp32 / INT8 (dynamic), one
policy step each (10 Euler steps of the expert), measured side by side in one process, 1 thread.

The network is π0.5's (SigLIP, Gemma backbone, Gemma action expert with adaptive RMSNorm on the
time, the state binned into the prompt), at widths and depths that fit 2 CPU cores (sizes in
SCALED below; random weights: latency only), two 112 x 112 cameras, 48-token prompts, chunk 10.
Prints the profiler's table, writes bench/results/pi05_cpu_latency.json.

    python bench/pi05_cpu_latency.py [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALED = {"vision": {"hidden_size": 192, "intermediate_size": 768, "num_layers": 4, "num_heads": 3, "patch_size": 14},
          "paligemma": {"width": 256, "depth": 6, "mlp_dim": 1024, "num_heads": 4, "num_kv_heads": 1, "head_dim": 64},
          "action_expert": {"width": 128, "depth": 6, "mlp_dim": 512, "num_heads": 4, "num_kv_heads": 1,
                            "head_dim": 64},
          "vocab_size": 320}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.models import load_vla
    from vla_compress.models.pi0.fixtures import write_tiny_pi0
    from vla_compress.passes import synthetic_observations
    from vla_compress.profile.measure import measure_policy
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ckpt = write_tiny_pi0(root / "pi05-scaled", kind="pi05", dtype="float32", chunk_size=10, n_action_steps=10,
                              num_inference_steps=10, image_resolution=[112, 112], tokenizer_max_length=48,
                              max_state_dim=32, max_action_dim=32,
                              input_features={"observation.state": {"type": "STATE", "shape": [8]},
                                              "observation.images.base_0_rgb": {"type": "VISUAL", "shape": [3, 112, 112]},
                                              "observation.images.wrist": {"type": "VISUAL", "shape": [3, 112, 112]}},
                              output_features={"action": {"type": "ACTION", "shape": [7]}},
                              vla_compress={"architecture": SCALED})
        vla = load_vla(ckpt)
        obs = synthetic_observations(vla, 4, seed=0)
        arts = []
        for precision in ("fp32", "int8-dynamic"):
            art = export(vla, OnnxExportConfig(precision=precision), root / f"onnx-{precision}", example=obs[:2],
                         calibration=obs)
            report = validate(art, vla, obs)
            arts.append((precision, str(art.path), report.to_dict()))
        policies = [("torch fp32", TorchPolicy(vla, threads=1))] + [
            (f"onnx {p}", OnnxRuntimePolicy(path, threads=1)) for p, path, _ in arts]
        measured = {name: measure_policy(pol, obs, steps=args.steps, warmup=2).to_dict() for name, pol in policies}
    params = sum(p.numel() for p in vla.parameters())
    base = measured["torch fp32"]["latency_ms"]["p50"]
    rows = [{"variant": name, "p50_ms": m["latency_ms"]["p50"], "p99_ms": m["latency_ms"]["p99"],
             "speedup_vs_torch_fp32": base / m["latency_ms"]["p50"]} for name, m in measured.items()]
    out = {"model": "pi05 scaled", "architecture": SCALED, "params": params, "threads": 1, "steps": args.steps,
           "rows": rows, "parity": {p: rep for p, _, rep in arts}}
    print(f"π0.5 scaled: {params / 1e6:.1f}M parameters, 1 thread")
    for r in rows:
        print(f"  {r['variant']:<18} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  {r['speedup_vs_torch_fp32']:.2f}x")
    for p, _, rep in arts:
        print(f"  parity {p}: passed={rep['passed']} action_l1={rep.get('action_l1')}")
    path = ROOT / "bench" / "results" / "pi05_cpu_latency.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
