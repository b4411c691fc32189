"""CPU latency per policy step of an OpenVLA-shaped model (scaled down, random weights): torch vs ONNX
fp32 vs ONNX INT8-dynamic (vs ONNX INT4-weight), side by side, for OpenVLA (7 greedy tokens) and
OpenVLA-OFT (one parallel-decoding pass, chunk 8, 2 images, proprio).

OpenVLA-7B does not fit this machine in fp32 (28 GB), so the architecture is kept and the sizes
scaled: the real fused DINOv2 + SigLIP layout at 224 px (256 patches per image, channel-stacked
branches, the 3-layer fused projector), the real Llama-2 vocabulary (32064 ids, untied LM head)
and prompt format, with narrower/shallower ViTs and Llama. Defaults give ~200M parameters.

    python bench/openvla_onnx_latency.py --threads 1 --steps 3 --warmup 1

Each artifact is exported with vla-compress's ONNX exporter and validated against torch (parity in
the JSON); the timed steps go through the same Policy objects closed-loop evaluation uses
(TorchPolicy, OnnxRuntimePolicy), observation to un-normalised actions. Random weights: latency
is representative, quantized parity is not (see tests/export/test_onnx_openvla.py). Writes
bench/results/openvla_onnx_latency.json with the 1-minute load average around each timing (other
jobs share these cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def scaled_model(family: str, hidden: int, layers: int, vit_dim: int, vit_depth: int, image: int, seed: int = 0):
    """OpenVLA / OpenVLA-OFT with openvla-7b's config.json, sizes scaled (random weights, float32)."""
    import torch

    from vla_compress.models.openvla import OpenVLA, OpenVLAConfig, OpenVLAOFT, openvla_7b_config_dict
    from vla_compress.models.openvla.configuration_openvla import preprocessor_config_dict
    from vla_compress.models.openvla.fixtures import build_tiny_tokenizer
    from vla_compress.models.openvla.processor_openvla import ImageTransform, PromptTokenizer

    d = openvla_7b_config_dict()
    d["image_sizes"] = [image, image]
    d["torch_dtype"] = "float32"
    d["text_config"].update(hidden_size=hidden, intermediate_size=int(hidden * 11008 / 4096) // 64 * 64,
                            num_hidden_layers=layers, num_attention_heads=hidden // 128,
                            num_key_value_heads=hidden // 128, torch_dtype="float32")
    vit = {"embed_dim": vit_dim, "depth": vit_depth, "num_heads": vit_dim // 64, "mlp_dim": 4 * vit_dim}
    d["vla_compress"] = {"vision_backbone_overrides": [vit, vit], "unnorm_key": "bridge_orig"}
    cfg = OpenVLAConfig.from_dict(d)
    images = ImageTransform(preprocessor_config_dict(cfg))
    tokenizer = PromptTokenizer(build_tiny_tokenizer())  # the real Llama-2 tokenizer is not shipped
    torch.manual_seed(seed)
    if family == "openvla":
        return OpenVLA(cfg, tokenizer, images, files={}).eval()
    stats = {"libero": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}, "proprio": {"q01": [-1.0] * 8, "q99": [1.0] * 8}}}
    cfg = cfg.with_settings(num_actions_chunk=8, num_images_in_input=2, unnorm_key="libero")
    return OpenVLAOFT(cfg, tokenizer, images, 7, 8, 8, norm_stats=stats, files={}).eval()


def observations(vla, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    texts = ["put the black bowl on the plate", "open the top drawer and put the bowl inside"]
    out = []
    for i in range(n):
        o = vla.dummy_observation(texts[i % 2])
        o["images"] = {c: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for c in o["images"]}
        if "state" in o:
            o["state"] = rng.uniform(-1, 1, o["state"].shape).astype(np.float32)
        out.append(o)
    return out


def timed(policy, obs: list[dict], steps: int, warmup: int) -> dict:
    from vla_compress.profile.measure import measure_policy

    load = os.getloadavg()[0]
    m = measure_policy(policy, observations=obs, steps=steps, warmup=warmup)
    d = m.to_dict()
    return {"p50_ms": d["latency_ms"]["p50"], "min_ms": d["latency_ms"]["min"], "max_ms": d["latency_ms"]["max"],
            "latencies_ms": m.latencies_ms, "breakdown_ms": m.breakdown_ms, "peak_rss_bytes": d["memory"].get("peak_rss_bytes"),
            "load_average_1min": {"before": load, "after": os.getloadavg()[0]}}


def bench_family(family: str, args, work: Path) -> dict:
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    t0 = time.perf_counter()
    vla = scaled_model(family, args.hidden, args.layers, args.vit_dim, args.vit_depth, args.image)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in vla.parameters())
    obs = observations(vla)
    tokens = vla.token_counts(obs[0]["instruction"]).to_dict()
    print(f"{family}: {params / 1e6:.1f}M parameters, tokens {tokens}", flush=True)
    row = {"family": family, "params": params, "tokens": tokens, "build_s": round(build_s, 1), "runtimes": {}}
    row["runtimes"]["torch fp32"] = timed(TorchPolicy(vla, threads=args.threads), obs, args.steps, args.warmup)
    print(f"  torch fp32      p50 {row['runtimes']['torch fp32']['p50_ms']:8.0f} ms", flush=True)
    base = None
    for precision in args.precisions:
        t0 = time.perf_counter()
        art = export(vla, OnnxExportConfig(precision=precision), work / f"{family}-{precision}", example=obs[:2],
                     base=base)
        export_s = time.perf_counter() - t0
        report = validate(art, vla, obs[:2], threads=args.threads)
        base = base or (art if precision == "fp32" else None)
        size = sum(f["bytes"] for f in art.files.values() if f.get("bytes"))
        r = timed(OnnxRuntimePolicy(art.path, threads=args.threads, allow_failed=True), obs, args.steps, args.warmup)
        r.update(export_s=round(export_s, 1), artifact_bytes=size, parity=report.summary(), status=art.status)
        row["runtimes"][f"onnx {precision}"] = r
        print(f"  onnx {precision:<12} p50 {r['p50_ms']:8.0f} ms  (export {export_s:.0f} s, {size / 1e6:.0f} MB; "
              f"{report.summary()})", flush=True)
    torch_ms = row["runtimes"]["torch fp32"]["p50_ms"]
    row["speedup_vs_torch"] = {k: round(torch_ms / v["p50_ms"], 2) for k, v in row["runtimes"].items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("openvla", "openvla-oft", "both"), default="both")
    ap.add_argument("--hidden", type=int, default=1024, help="Llama hidden size (openvla-7b: 4096)")
    ap.add_argument("--layers", type=int, default=8, help="Llama layers (openvla-7b: 32)")
    ap.add_argument("--vit-dim", type=int, default=384, help="width of each ViT (DINOv2-L 1024, SigLIP-so400m 1152)")
    ap.add_argument("--vit-depth", type=int, default=6, help="depth of each ViT (24 / 27)")
    ap.add_argument("--image", type=int, default=224, help="image size (openvla-7b: 224, 256 patches)")
    ap.add_argument("--precision", "-p", dest="precisions", action="append",
                    help="ONNX precisions after fp32 (repeatable; default int8-dynamic)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "openvla_onnx_latency.json")
    args = ap.parse_args()
    args.precisions = ["fp32", *[p for p in (args.precisions or ["int8-dynamic"]) if p != "fp32"]]

    import onnxruntime
    import torch

    from vla_compress.fileio import write_json

    torch.set_num_threads(args.threads)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # per-node INFO lines
    families = ("openvla", "openvla-oft") if args.family == "both" else (args.family,)
    with tempfile.TemporaryDirectory(prefix="openvla-onnx-bench-") as tmp:
        rows = [bench_family(f, args, Path(tmp)) for f in families]
    result = {"what": "policy-step latency, OpenVLA-shaped models scaled down (random weights), this CPU",
              "config": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows,
              "host": {"machine": platform.machine(), "processor": platform.processor(), "cores": os.cpu_count(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__},
              "command": "python bench/openvla_onnx_latency.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "precisions"))
              + "".join(f" -p {p}" for p in args.precisions[1:])}
    write_json(args.out, result)
    print(f"\n{'family':<12} {'params':>8} " + " ".join(f"{k:>18}" for k in rows[0]["runtimes"]))
    for r in rows:
        print(f"{r['family']:<12} {r['params'] / 1e6:7.0f}M " + " ".join(
            f"{v['p50_ms']:>10.0f} ms {r['speedup_vs_torch'][k]:>4.2f}x" for k, v in r["runtimes"].items()))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
