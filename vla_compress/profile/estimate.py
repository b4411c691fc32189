"""Roofline latency estimate of one policy step on a device profile, and the memory-fit check.

Per operator of the trace (trace.py):
    t = max(flops / (eta_c * peak[compute precision]), bytes / (eta_m * bandwidth)) + launch overhead
summed per breakdown group (vision, projector, prefill, decode, action head). Bytes are the
operator's weight elements at the weight format plus its activation elements (KV cache included
at decode) at the activation precision.

Precisions (`resolve_precision`): fp32 / fp16 / bf16 compute and store in that type. int8 / fp8 /
fp4 are W8A8-style compute formats where the runtime computes in them (matmuls with weights run at
that peak; attention and other activation-only matmuls stay in the runtime's float type), and
weight-only formats where the runtime lists them under `weight_only`. int4 is weight-only (W4A16)
unless a runtime computes in it: a bandwidth format, computed at fp16 (else bf16, fp32). Packed
low-bit weights carry their block scales: int4 / fp4 at 4.5 bits per weight (one fp16 / fp8 scale
per 32 / 16 weights, as MLC q4f16_1, GGUF Q4_0 and NVFP4 store them). Norm weights and biases stay
in the activation type.

Fusion: `torch` runs eagerly, one kernel per aten op (every op of the trace pays its bytes and a
launch). Compiled runtimes (TensorRT, ONNX Runtime, llama.cpp, MLC) fuse norms, activations and
copies into neighbouring kernels: only matmul / attention / convolution ops are kernels there.

An estimate is labelled as one and carries every input it used (device, power mode, precision,
runtime, peaks, bandwidth, etas and where they come from, kernels, token counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import canonical_or_same
from ..errors import ConfigError
from .trace import GROUPS, HEAVY_KINDS, StepTrace

FLOAT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0}
LOWBIT_BYTES = {"int8": 1.0, "fp8": 1.0, "int4": 4.5 / 8, "fp4": 4.5 / 8}  # per weight, scales included
ALIASES = {"int8-dynamic": "int8", "int8-static": "int8", "int4-weight": "w4a16", "int8-weight": "w8a16",
           "q8f16": "w8a16", "q4f16": "w4a16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
RUNTIME_PREFERENCE = ("tensorrt", "onnxruntime", "torch", "llama.cpp", "openvino")
GB = 1e9  # memory_gb and bandwidth_gbs are decimal GB
# The uncertainty band of an estimate: each uncalibrated efficiency factor is swept over the spread
# that public measurements show (/work/shared/hardware-facts.md: "start eta_c at 0.4-0.6"; eta_m of
# 0.42 (llama.cpp Q4_0, AGX Orin) to 0.85 (MLC INT4, AGX Orin) in its efficiency table), and the
# per-kernel overhead over a factor of 3 either way (assumed: per-kernel costs of small operators
# differ that much between runtimes and hosts; a calibration replaces it). A calibrated factor is
# swept over its fit's rms relative error instead.
ETA_COMPUTE_SPREAD = (0.4, 0.6)
ETA_MEMORY_SPREAD = (0.42, 0.85)
OVERHEAD_FACTOR = 3.0
CALIBRATED_ERROR_UNKNOWN = 0.25  # a calibrated factor whose source does not state its fit's error


@dataclass(frozen=True)
class PrecisionSpec:
    """How a deployment precision maps onto the roofline."""
    name: str  # as asked (after aliases)
    compute: str  # precision of matmuls with weights (the peak they run at)
    act_compute: str  # precision of activation-only matmuls (attention) and of activations
    weight_format: str  # how weights are stored (eta_memory is looked up with it)
    weight_bytes: float  # bytes per weight element
    act_bytes: float  # bytes per activation element (and KV cache)
    weight_only: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _float_of(rt) -> str:
    for p in ("fp16", "bf16", "fp32"):
        if p in rt.precisions:
            return p
    raise ConfigError(f"runtime {rt.name} computes in no floating-point precision")


def check_precision_name(name: str) -> str:
    """The canonical name of deployment precision `name` (a ConfigError listing the known ones)."""
    from ..hardware import PRECISIONS

    asked = ALIASES.get(name.lower(), name.lower())
    if {"w4a16": "int4", "w8a16": "int8"}.get(asked, asked) not in PRECISIONS:
        raise ConfigError(f"unknown precision '{name}'; known: {', '.join(PRECISIONS)}, "
                          f"{', '.join(sorted(ALIASES))}, w4a16, w8a16")
    return asked


def resolve_precision(name: str, profile, runtime: str) -> PrecisionSpec:
    """The roofline meaning of precision `name` for `runtime` on `profile` (clear error if unsupported)."""
    asked = check_precision_name(name)
    rt = profile.runtime(runtime)
    forced_weight_only = asked in ("w4a16", "w8a16")
    base = {"w4a16": "int4", "w8a16": "int8"}.get(asked, asked)
    if base in FLOAT_BYTES:
        profile.peak(base, runtime=runtime)  # raises when the runtime does not compute in it here
        return PrecisionSpec(asked, base, base, base, FLOAT_BYTES[base], FLOAT_BYTES[base], False)
    act = _float_of(rt)
    if base in rt.precisions and not forced_weight_only:
        return PrecisionSpec(asked, base, act, base, LOWBIT_BYTES[base], FLOAT_BYTES[act], False)
    if base in rt.weight_only or (forced_weight_only and base in rt.precisions):
        return PrecisionSpec(asked, act, act, base, LOWBIT_BYTES[base], FLOAT_BYTES[act], True)
    raise ConfigError(f"{runtime} on {profile.name} has no {base} (computes in {', '.join(rt.precisions)}; "
                      f"weight-only: {', '.join(rt.weight_only) or 'none'})")


def default_runtime(profile, precision: str) -> str:
    """The first runtime of RUNTIME_PREFERENCE on this device that computes in or stores `precision`."""
    last_error: ConfigError | None = None
    for rt in RUNTIME_PREFERENCE:
        if rt in profile.runtimes:
            try:
                resolve_precision(precision, profile, rt)
                return rt
            except ConfigError as e:
                last_error = e
    raise ConfigError(f"no runtime on {profile.name} runs precision '{precision}'"
                      + (f" ({last_error})" if last_error else ""))


def default_precision(profile, runtime: str | None = None) -> str:
    """fp16 where a runtime computes in it (GPUs, SoCs), else bf16, else fp32."""
    rts = [profile.runtime(runtime)] if runtime else list(profile.runtimes.values())
    for p in ("fp16", "bf16", "fp32"):
        if any(p in rt.precisions for rt in rts):
            return p
    return "fp32"


@dataclass
class RooflineTerms:
    """Per-kernel roofline terms at eta = 1: `compute_s` = flops / peak, `memory_s` = bytes /
    bandwidth; `launch` 1 for a kernel that pays a launch. With efficiency factors the time is
    sum(max(compute_s / eta_c, memory_s / eta_m)) + launch_overhead * sum(launch)."""
    compute_s: np.ndarray
    memory_s: np.ndarray
    launch: np.ndarray
    groups: np.ndarray  # group name per kernel
    flops: np.ndarray
    bytes: np.ndarray
    compute_precision: list[str]  # per kernel: eta_compute key
    memory_precision: list[str]  # per kernel: eta_memory key

    def select(self, groups) -> "RooflineTerms":
        keep = np.isin(self.groups, list(groups))
        return RooflineTerms(self.compute_s[keep], self.memory_s[keep], self.launch[keep], self.groups[keep],
                             self.flops[keep], self.bytes[keep],
                             [p for p, k in zip(self.compute_precision, keep) if k],
                             [p for p, k in zip(self.memory_precision, keep) if k])

    def times(self, eta_c: np.ndarray | float, eta_m: np.ndarray | float, launch_s: float) -> np.ndarray:
        return np.maximum(self.compute_s / eta_c, self.memory_s / eta_m) + launch_s * self.launch


def roofline_terms(trace: StepTrace, profile, precision: PrecisionSpec, power_mode: str | None, runtime: str,
                   fused: bool) -> RooflineTerms:
    """The trace's kernels as roofline terms at eta = 1 (see RooflineTerms)."""
    bw = profile.bandwidth(power_mode) * GB
    peaks = {p: profile.peak(p, power_mode, runtime) * 1e12 for p in {precision.compute, precision.act_compute}}
    ops = [o for o in trace.ops if not fused or o.kind in HEAVY_KINDS]
    comp_prec = [precision.compute if (o.weight_elems and o.kind != "embedding") else precision.act_compute
                 for o in ops]
    mem_prec = [precision.weight_format if o.weight_elems else precision.act_compute for o in ops]
    flops = np.array([o.flops for o in ops], dtype=np.float64)
    nbytes = np.array([o.weight_elems * precision.weight_bytes + o.act_elems * precision.act_bytes for o in ops],
                      dtype=np.float64)
    peak = np.array([peaks[p] for p in comp_prec], dtype=np.float64)
    return RooflineTerms(flops / peak, nbytes / bw, np.ones(len(ops)), np.array([o.group for o in ops], dtype=object),
                         flops, nbytes, comp_prec, mem_prec)


@dataclass
class MemoryFit:
    """Weights + KV cache + activations at the deployment precision vs the device's memory."""
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    needed_bytes: int
    device_bytes: int
    fits: bool

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["headroom_bytes"] = self.device_bytes - self.needed_bytes
        d["note"] = ("weights at the weight format (norms/biases at the activation type); KV cache of the "
                     "decode steps; activations = the largest operator's inputs + outputs (a lower bound: "
                     "runtimes keep a few such buffers and a workspace); device memory is shared with the OS "
                     "on SoCs")
        return d


def memory_fit(trace: StepTrace, precision: PrecisionSpec, device_bytes: int) -> MemoryFit:
    weights = int(trace.matrix_param_elems * precision.weight_bytes + trace.vector_param_elems * precision.act_bytes)
    kv = int(trace.kv_cache_elems * precision.act_bytes)
    act = int(max((o.act_elems for o in trace.ops), default=0) * precision.act_bytes)
    needed = weights + kv + act
    return MemoryFit(weights, kv, act, needed, int(device_bytes), needed <= device_bytes)


@dataclass
class Estimate:
    """A roofline estimate (not a measurement) of one policy step, with all of its inputs."""
    device: str
    precision: str
    runtime: str
    power_mode: str
    latency_s: float
    per_group_s: dict[str, float]
    memory: MemoryFit
    inputs: dict[str, Any]
    bound: dict[str, float] = field(default_factory=dict)  # share of the time that is memory-bound, per group
    range_s: tuple[float, float] = (0.0, 0.0)  # the uncertainty band (see ETA_COMPUTE_SPREAD)

    @property
    def chunk_size(self) -> int:
        return int(self.inputs["model"].get("chunk_size") or 1)

    def control_hz(self, execute_steps: int | None = None) -> float:
        """Actions per second when `execute_steps` (default: the whole chunk) run per inference."""
        k = self.chunk_size if execute_steps is None else min(execute_steps, self.chunk_size)
        return k / self.latency_s

    def to_dict(self) -> dict:
        return {"kind": "estimate", "device": self.device, "precision": self.precision, "runtime": self.runtime,
                "power_mode": self.power_mode, "latency_ms": self.latency_s * 1e3,
                "latency_ms_range": [self.range_s[0] * 1e3, self.range_s[1] * 1e3],
                "inference_hz": 1.0 / self.latency_s, "control_hz": self.control_hz(),
                "chunk_size": self.chunk_size,
                "per_group_ms": {g: v * 1e3 for g, v in self.per_group_s.items()},
                "memory_bound_share": self.bound, "memory": self.memory.to_dict(), "inputs": self.inputs}


def _eta_source(profile, group: str, key: str, runtime: str) -> str:
    """Where an efficiency factor comes from (calibrated or default), read from the profile's facts;
    the same lookup order as Efficiency.overlay + compute()/memory()."""
    if group == "launch_overhead_us":
        candidates = [f"efficiency.runtimes.{runtime}.{group}", f"efficiency.{group}"]
    else:
        candidates = [f"efficiency.runtimes.{runtime}.{group}.{key}", f"efficiency.{group}.{key}",
                      f"efficiency.runtimes.{runtime}.{group}.default", f"efficiency.{group}.default"]
    for fact_key in candidates:
        if fact_key in profile.facts:
            return profile.facts[fact_key].source
    return "unknown"


def estimate(trace: StepTrace, profile, precision: str | None = None, runtime: str | None = None,
             power_mode: str | None = None, fused: bool | None = None) -> Estimate:
    """Roofline estimate of the traced policy step on `profile` (see the module docstring)."""
    runtime = canonical_or_same(runtime) if runtime else None  # `onnx` is `onnxruntime` (backends.py)
    precision = precision or default_precision(profile, runtime)
    runtime = runtime or default_runtime(profile, precision)
    spec = resolve_precision(precision, profile, runtime)
    mode = profile.mode(power_mode).name
    fused = runtime != "torch" if fused is None else fused
    eff = profile.efficiency(runtime)
    terms = roofline_terms(trace, profile, spec, mode, runtime, fused)
    eta_c = np.array([eff.compute(p) for p in terms.compute_precision])
    eta_m = np.array([eff.memory(p) for p in terms.memory_precision])
    launch_s = (eff.launch_overhead_us or 0.0) * 1e-6
    t = terms.times(eta_c, eta_m, launch_s)
    per_group, bound = {}, {}
    for g in GROUPS:
        sel = terms.groups == g
        if sel.any():
            per_group[g] = float(t[sel].sum())
            mem = terms.memory_s[sel] / eta_m[sel] >= terms.compute_s[sel] / eta_c[sel]
            bound[g] = float(t[sel][mem].sum() / max(t[sel].sum(), 1e-30))
    fit = memory_fit(trace, spec, int(profile.memory_gb * GB))
    band = uncertainty_band(terms, eta_c, eta_m, launch_s, profile, runtime)
    etas = {"eta_compute": {p: eff.compute(p) for p in sorted(set(terms.compute_precision))},
            "eta_memory": {p: eff.memory(p) for p in sorted(set(terms.memory_precision))},
            "launch_overhead_us": eff.launch_overhead_us}
    sources = {f"eta_compute.{p}": _eta_source(profile, "eta_compute", p, runtime) for p in etas["eta_compute"]}
    sources.update({f"eta_memory.{p}": _eta_source(profile, "eta_memory", p, runtime) for p in etas["eta_memory"]})
    sources["launch_overhead_us"] = _eta_source(profile, "launch_overhead_us", "", runtime)
    inputs = {
        "label": "roofline estimate, not a measurement",
        "device": profile.name, "display_name": profile.display_name, "power_mode": mode, "runtime": runtime,
        "precision": spec.to_dict(), "fused": fused,
        "peak_tflops": {p: profile.peak(p, mode, runtime) for p in sorted({spec.compute, spec.act_compute})},
        "bandwidth_gbs": profile.bandwidth(mode), "efficiency": etas, "efficiency_sources": sources,
        "calibrated": profile.calibration_path is not None and any(s.startswith("calibrated") for s in sources.values()),
        "calibration_file": str(profile.calibration_path) if profile.calibration_path else None,
        "kernels": int(terms.launch.sum()), "flops": float(terms.flops.sum()), "bytes": float(terms.bytes.sum()),
        "model": trace.model,
    }
    inputs["uncertainty"] = band[2]
    return Estimate(profile.name, spec.name, runtime, mode, float(t.sum()), per_group, fit, inputs, bound,
                    (band[0], band[1]))


def uncertainty_band(terms: RooflineTerms, eta_c: np.ndarray, eta_m: np.ndarray, launch_s: float, profile,
                     runtime: str) -> tuple[float, float, dict]:
    """(fastest, slowest) step time over the spread of every efficiency factor (see
    ETA_COMPUTE_SPREAD), and how each factor was swept."""
    def calibrated_error(group: str, key: str) -> float | None:
        """None for an uncalibrated factor, else its fit's rms relative error (recorded in its source)."""
        source = _eta_source(profile, group, key, runtime)
        if not source.startswith("calibrated"):
            return None
        m = re.search(r"rms relative error ([0-9.]+)%", source)
        return float(m.group(1)) / 100 if m else CALIBRATED_ERROR_UNKNOWN

    def swept(values: np.ndarray, group: str, keys: list[str], spread: tuple[float, float]) -> tuple:
        lo, hi = values.copy(), values.copy()
        for i, k in enumerate(keys):
            rel = calibrated_error(group, k)
            if rel is not None:
                lo[i], hi[i] = values[i] * (1 - rel), min(1.0, values[i] * (1 + rel))
            else:
                lo[i], hi[i] = min(spread[0], values[i]), max(spread[1], values[i])
        return lo, hi

    c_lo, c_hi = swept(eta_c, "eta_compute", terms.compute_precision, ETA_COMPUTE_SPREAD)
    m_lo, m_hi = swept(eta_m, "eta_memory", terms.memory_precision, ETA_MEMORY_SPREAD)
    rel = calibrated_error("launch_overhead_us", "")
    if rel is not None:
        l_lo, l_hi = launch_s * (1 - rel), launch_s * (1 + rel)
        how = f"calibrated factors +-{rel:.0%} (the calibration's rms relative error)"
    else:
        l_lo, l_hi = launch_s / OVERHEAD_FACTOR, launch_s * OVERHEAD_FACTOR
        how = (f"uncalibrated factors over eta_compute {ETA_COMPUTE_SPREAD}, eta_memory {ETA_MEMORY_SPREAD}, "
               f"per-kernel overhead /{OVERHEAD_FACTOR:g} to x{OVERHEAD_FACTOR:g}")
    fast = float(terms.times(c_hi, m_hi, l_lo).sum())
    slow = float(terms.times(c_lo, m_lo, l_hi).sum())
    return fast, slow, {"fastest_ms": fast * 1e3, "slowest_ms": slow * 1e3, "how": how}
