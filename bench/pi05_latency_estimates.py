"""π0.5 at real size (preset:pi05-3b) estimated on Jetson AGX Orin 64GB and Jetson Thor, next to the
published FlashRT figures (π0.5, 2 cameras: AGX Orin 193 ms BF16, 124 ms INT8 W8A8; Thor 44 ms FP8).

The preset is lerobot/pi05_base's shape: three 224 x 224 cameras and prompts padded to 200 tokens.
FlashRT's figures are for two cameras, so the estimate is also made for a two-camera variant and
for prompts of 48 tokens (a short task plus the 32 state bins, as a deployed π0.5 prompt is), on
the meta device (nothing allocated). Prints a table, writes bench/results/pi05_latency_estimates.json.

    python bench/pi05_latency_estimates.py
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLASHRT = [("jetson-agx-orin-64gb", "bf16", "tensorrt", 193.0), ("jetson-agx-orin-64gb", "int8", "tensorrt", 124.0),
           ("jetson-thor", "fp8", "tensorrt", 44.0)]


def build(cameras: int, text: int):
    """π0.5 base with `cameras` 224 x 224 cameras and prompts padded to `text` tokens, on the meta device."""
    import torch

    from vla_compress.models.lerobot_layout import write_files
    from vla_compress.models.pi0.adapter import Pi05
    from vla_compress.models.pi0.checkpoint_pi0 import base_policy_config, processor_files, write_tiny_tokenizer
    from vla_compress.models.pi0.configuration_pi0 import Pi0Arch, Pi0Config
    from vla_compress.models.pi0.processor_pi0 import (TOKENIZER_SUBDIR, PaliGemmaTokenizer, Pi0Processor,
                                                        read_pipelines)

    raw = base_policy_config("pi05")
    images = [k for k in raw["input_features"] if k.startswith("observation.images.")]
    for k in images[cameras:]:
        del raw["input_features"][k]
    raw["tokenizer_max_length"] = text
    cfg = dataclasses.replace(Pi0Config.from_dict(raw), preset=f"pi05-3b-{cameras}cam-{text}tok")
    with tempfile.TemporaryDirectory() as d:
        write_files(processor_files(raw, {}), Path(d))
        folder = write_tiny_tokenizer(Path(d) / TOKENIZER_SUBDIR)
        settings = read_pipelines(Path(d), cfg)
        tokenizer = PaliGemmaTokenizer(folder, cfg.tokenizer_max_length)
    with torch.device("meta"):
        return Pi05(Pi0Arch.from_config(cfg), Pi0Processor(cfg, tokenizer, settings)).to(torch.bfloat16).eval()


def without_launches(trace, hw, precision: str, runtime: str, power_mode: str) -> tuple[float, int]:
    """(ms, kernels) of the same roofline with no per-kernel launch cost: a runtime that replays the
    whole step as one CUDA graph of fused kernels, as FlashRT does."""
    import numpy as np

    from vla_compress.profile.estimate import resolve_precision, roofline_terms

    terms = roofline_terms(trace, hw, resolve_precision(precision, hw, runtime), power_mode, runtime, True)
    eff = hw.efficiency(runtime)
    eta_c = np.array([eff.compute(p) for p in terms.compute_precision])
    eta_m = np.array([eff.memory(p) for p in terms.memory_precision])
    return float(terms.times(eta_c, eta_m, 0.0).sum()) * 1e3, int(terms.launch.sum())


def main() -> None:
    from vla_compress.hardware import load_hardware
    from vla_compress.profile.estimate import estimate
    from vla_compress.profile.trace import trace_policy_step

    rows = []
    for cameras, text in ((3, 200), (2, 200), (2, 48)):
        vla = build(cameras, text)
        trace = trace_policy_step(vla)
        for device, precision, runtime, published in FLASHRT:
            hw = load_hardware(device)
            e = estimate(trace, hw, precision, runtime)
            d = e.to_dict()
            graph_ms, kernels = without_launches(trace, hw, precision, runtime, e.power_mode)
            rows.append({"cameras": cameras, "text_tokens": text, "prefill_tokens": trace.model["tokens"]["prefill"],
                         "device": device, "precision": precision, "runtime": runtime,
                         "estimate_ms": d["latency_ms"], "band_ms": d["latency_ms_range"],
                         "per_group_ms": d["per_group_ms"], "flashrt_ms": published,
                         "ratio": d["latency_ms"] / published, "calibrated": d["inputs"]["calibrated"],
                         "kernels": kernels, "launch_overhead_us": d["inputs"]["efficiency"]["launch_overhead_us"],
                         "estimate_without_launches_ms": graph_ms, "ratio_without_launches": graph_ms / published})
    print(f"{'cams':>4} {'text':>4} {'prefill':>7} {'device':<22}{'prec':<6}{'est ms':>8}  {'band ms':<15}"
          f"{'FlashRT':>8}{'ratio':>7}{'no-launch ms':>13}{'ratio':>7}")
    for r in rows:
        band = f"{r['band_ms'][0]:.0f}-{r['band_ms'][1]:.0f}"
        print(f"{r['cameras']:>4} {r['text_tokens']:>4} {r['prefill_tokens']:>7} {r['device']:<22}{r['precision']:<6}"
              f"{r['estimate_ms']:>8.1f}  {band:<15}{r['flashrt_ms']:>8.0f}{r['ratio']:>7.2f}"
              f"{r['estimate_without_launches_ms']:>13.1f}{r['ratio_without_launches']:>7.2f}")
    out = ROOT / "bench" / "results" / "pi05_latency_estimates.json"
    out.write_text(json.dumps({"rows": rows, "source": "FlashRT published π0.5 latencies (issue 16)"}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
