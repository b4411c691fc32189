"""Measured CPU latency of a SmolVLA-base-sized policy (450M parameters, random weights).

`preset:smolvla-450m` is estimate-only (built on the meta device); this script builds the same
architecture with real (random) weights on the CPU and times full policy steps through the torch
runtime with vla-compress's profiler: preprocessing (resize to 512 px), the SigLIP encoder per
camera, the 16-layer VLM prefill, 10 Euler steps of the action expert, un-normalisation.

    python bench/smolvla_latency.py --cameras 2 --threads 2 --steps 3 --warmup 1

Prints a table and writes bench/results/smolvla_latency_<dtype>_<cameras>cam_<threads>t.json with the
1-minute load average around the timed steps: other jobs share these cores, and with 2 threads a
policy step took 4.2 s at load 4.5 but 62-65 s at load 5-9 (each of the expert's ~1000 small ops
per Euler step waits at an OpenMP barrier for a core), while 1 thread stayed at 7.7 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=2, help="cameras given per observation (SmolVLA-base has 3 slots)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed policy steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from vla_compress.models.smolvla import SmolVLA
    from vla_compress.profile.counting import count_policy_step
    from vla_compress.profile.measure import measure_policy
    from vla_compress.runtime.policy import TorchPolicy

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    vla = SmolVLA.realistic(device="cpu", dtype=getattr(torch, args.dtype))
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in vla.parameters())
    rng = np.random.default_rng(0)
    obs = []
    for i in range(2):
        o = vla.dummy_observation(["pick up the cube and put it in the box", "open the drawer"][i])
        o["images"] = {c: rng.integers(0, 256, im.shape, dtype=np.uint8)
                       for c, im in list(o["images"].items())[: args.cameras]}
        o["state"] = rng.uniform(-1, 1, o["state"].shape).astype(np.float32)
        obs.append(o)
    count = count_policy_step(vla, obs[0])
    load_before = os.getloadavg()
    m = measure_policy(TorchPolicy(vla, threads=args.threads), observations=obs, steps=args.steps, warmup=args.warmup)
    d = m.to_dict()
    tokens = vla.token_counts(obs[0]["instruction"]).to_dict()
    tokens["visual"] = args.cameras * vla.arch.tokens_per_image
    tokens["prefill"] = tokens["visual"] + tokens["text"] + tokens["proprio"]
    result = {"model": "smolvla-450m (SmolVLA-base architecture, random weights)", "params": params,
              "dtype": args.dtype, "cameras": args.cameras, "threads": args.threads, "build_s": round(build_s, 1),
              "flops_per_step": count.flops, "tokens": tokens, "latency_ms": d["latency_ms"],
              "latencies_ms": m.latencies_ms, "breakdown_ms": m.breakdown_ms, "control_hz": d["control_hz"],
              "actions_per_step": m.executed_per_inference, "memory": d["memory"], "device": m.device,
              # other jobs share this machine's cores: the 1-minute load average around the timed steps
              "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0], "cores": os.cpu_count()},
              "host": {"machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
                       "torch": torch.__version__},
              "command": "python bench/smolvla_latency.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                      if v is not None and k != "out")}
    out = args.out or Path(__file__).parent / "results" / f"smolvla_latency_{args.dtype}_{args.cameras}cam_{args.threads}t.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"SmolVLA-450M-size ({params:,} params, {args.dtype}, {args.cameras} camera(s), {args.threads} threads)")
    print(f"  FLOPs/step {count.flops / 1e9:.1f} G   tokens {tokens}")
    print(f"  latency p50 {d['latency_ms']['p50']:.0f} ms  min {d['latency_ms']['min']:.0f}  max {d['latency_ms']['max']:.0f}"
          f"  ({args.steps} timed steps after {args.warmup} warm-up)")
    for k, v in m.breakdown_ms.items():
        print(f"    {k:<14} {v:9.1f} ms")
    print(f"  control rate {d['control_hz']:.1f} Hz executing {m.executed_per_inference} actions per step")
    print(f"  load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"  peak RSS {d['memory'].get('peak_rss_bytes', 0) / 1e9:.2f} GB   -> {out}")


if __name__ == "__main__":
    main()
