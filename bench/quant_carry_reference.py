"""Torch-quantized reference-small-chunk exported with its own scheme carried vs re-quantized.

For each torch scheme (int8-static W8A8 on every Linear, int4 AWQ and plain int4 on the backbone):
the pass's compression-log fidelity against the original on held-out demo frames, then each
export (ONNX, GGUF, TensorRT-ready ONNX) made twice -- carrying torch's integers and scales
(default) and re-quantizing the dequantized weights (carry_quantization: false) -- plus an fp32
ONNX export that carries the quantized layers and leaves the rest float, each validated
against the *quantized* torch model on the same held-out frames (parity in normalised action units).

    python bench/quant_carry_reference.py [--checkpoint checkpoints/reference-small-chunk]
        [--dataset .cache/demos/mt10-corner128] [--samples 32]
Writes bench/results/quant_carry_reference.json.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch

    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig
    from vla_compress.export.observations import export_observations
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.export.tensorrt import TensorRTExportConfig
    from vla_compress.fileio import write_json
    from vla_compress.models import load_vla
    from vla_compress.passes import PassContext, apply_passes, calibration_dataset
    from vla_compress.passes.quantize import (Int4WeightOnlyConfig, Int8StaticActivationInt8WeightConfig,
                                              Int8WeightOnlyConfig)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints/reference-small-chunk")
    ap.add_argument("--dataset", type=Path, default=ROOT / ".cache/demos/mt10-corner128")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--work", type=Path, default=ROOT / ".cache/bench/quant-carry")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/quant_carry_reference.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    original = load_vla(args.checkpoint)
    obs = export_observations(original, args.checkpoint, args.dataset, args.samples, args.samples, seed=0)
    print(f"held-out: {obs.source}")
    schemes = {
        "int8-static (all Linears)": (Int8StaticActivationInt8WeightConfig(),
                                      [("onnx", OnnxExportConfig, "int8-static"), ("tensorrt", TensorRTExportConfig, "int8"),
                                       ("gguf", GgufExportConfig, "q8_0")]),
        "int4 g64 AWQ (backbone)": (Int4WeightOnlyConfig(group_size=64, awq=True, where="backbone"),
                                    [("onnx", OnnxExportConfig, "int4-weight"), ("gguf", GgufExportConfig, "q4_k_m")]),
        "int4 g64 (backbone)": (Int4WeightOnlyConfig(group_size=64, where="backbone"),
                                [("onnx", OnnxExportConfig, "int4-weight"), ("gguf", GgufExportConfig, "q4_k_m")]),
        "int8 weight-only (backbone)": (Int8WeightOnlyConfig(where="backbone"), [("gguf", GgufExportConfig, "q8_0")]),
    }
    rows = []
    for label, (cfg, exports) in schemes.items():
        vla = copy.deepcopy(original)
        ctx = PassContext(calibration=calibration_dataset(vla, obs.calibration), held_out=obs.validation)
        apply_passes(vla, [cfg], ctx)
        fid = vla.compression_log[-1]["fidelity"]
        print(f"{label}: torch vs original action L1 {fid['action_l1']:.4f} (max {fid['action_max_abs']:.4f})")
        # fp32 ONNX: the carried layers quantized as in torch, everything else float (the carry alone)
        runs = [("onnx", OnnxExportConfig, "fp32", True)] + [(f, c, p, carry) for f, c, p in exports
                                                               for carry in (True, False)]
        for fmt, cls, precision, carry in runs:
            t0 = time.perf_counter()
            out = args.work / f"{label.split()[0]}-{cfg.to_dict().get('awq', '')}-{fmt}-{precision}-{carry}"
            art = export(vla, cls(precision=precision, carry_quantization=carry), out, example=obs.calibration,
                         calibration=obs.calibration, source=args.checkpoint)
            rep = validate(art, vla, obs.validation)
            qc = art.manifest.get("quantization_carry") or {}
            size = sum(p.stat().st_size for p in art.path.iterdir() if p.suffix in (".onnx", ".gguf", ".data"))
            row = {"scheme": label, "format": fmt, "precision": precision, "carried": carry,
                   "layers_carried": len(qc.get("layers", {})), "layers_not_carried": len(qc.get("not_carried", {})),
                   "layers_inexact": len(qc.get("inexact", {})), "status": art.status,
                   "action_l1_vs_quantized_torch": rep.action_l1_mean, "max_abs_vs_quantized_torch": rep.max_abs,
                   "graph_bytes": size, "torch_fidelity_vs_original": fid, "wall_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"  {fmt:8s} {precision:11s} carry={str(carry):5s} carried {row['layers_carried']:2d} "
                  f"(inexact {row['layers_inexact']:2d}, not {row['layers_not_carried']:2d})  action L1 vs torch-q "
                  f"{rep.action_l1_mean:.5f}  max {rep.max_abs:.4f}  {size / 1e6:.1f} MB  {art.status}")
    write_json(args.out, {"checkpoint": str(args.checkpoint), "held_out": obs.source, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
