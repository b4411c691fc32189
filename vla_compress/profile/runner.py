"""`vla-compress profile` without the terminal: resolve what to profile, measure it here, estimate
it on device profiles, optionally calibrate, and return one JSON-ready result (the CLI renders it).

A target is a checkpoint directory (run in torch), an exported artifact directory (run in its
format's runtime, from its backend record: ONNX Runtime, llama.cpp, TensorRT) or `preset:NAME`: a
model of that shape built on the meta device, which is estimated only (nothing is allocated, so
OpenVLA-7B-sized presets cost nothing here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..backends import export_formats, format_backend, get_backend
from ..errors import ConfigError, VLACompressError

PRESET_PREFIX = "preset:"


def preset_names() -> list[str]:
    from ..models.registry import preset_names as names

    return list(names())


@dataclass
class Target:
    """What to profile: a model to trace (None when none can be built) and how to run it here."""
    spec: str
    kind: str  # preset | checkpoint | artifact
    vla: Any = None
    make_policy: Callable[[], Any] | None = None
    precision: str | None = None  # what it runs in when measured here
    runtime: str | None = None
    estimate_precision: str | None = None  # default estimator precision (an artifact's own)
    notes: list[str] = field(default_factory=list)


def build_preset(name: str):
    """A model of preset `name` on the meta device (shapes only, nothing allocated)."""
    from ..models.registry import build_preset as build

    return build(name)


def _dtype_precision(vla) -> str:
    dt = str(next(vla.parameters()).dtype).replace("torch.", "")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dt, dt)


def _artifact_model(art):
    """A meta-device model of an artifact's network for tracing: rebuilt from the artifact's own files
    where its family can (`meta_model_from_artifact`, which sees pruning and token budgets), else
    loaded from the source checkpoint recorded in the manifest, if it is still there."""
    from ..models.registry import get_family

    family = art.manifest.get("model", {}).get("family") or art.manifest.get("source", {}).get("family")
    spec = get_family(family) if family else None
    if spec is not None and spec.has_hook("presets", "meta_model_from_artifact"):
        vla = spec.hook("presets", "meta_model_from_artifact")(art.path)
        if vla is not None:
            return vla, None
    src = (art.manifest.get("source") or {}).get("checkpoint")
    if src and Path(src).is_dir():
        from ..models import load_vla

        return load_vla(src), f"traced from the source checkpoint {src}"
    return None, "no model to trace for estimates (the artifact's source checkpoint is not available)"


def resolve_target(spec: str, allow_pickle: bool = False, threads: int | None = None) -> Target:
    """Turn a CLI argument into a Target (a clear error when it is none of the three kinds)."""
    if spec.startswith(PRESET_PREFIX):
        name = spec[len(PRESET_PREFIX):]
        return Target(spec, "preset", vla=build_preset(name), notes=["preset on the meta device: estimated only"])
    path = Path(spec)
    if (path / "artifact.json").is_file():
        from ..export.artifact import Artifact

        art = Artifact.load(path)
        if art.format not in export_formats():
            raise ConfigError(f"{path}: profiling runs {', '.join(export_formats())} artifacts; this one is "
                              f"{art.format!r}")
        backend = format_backend(art.format)
        vla, note = _artifact_model(art)

        def make():
            from ..evaluate.rollout import PolicySpec

            return PolicySpec(backend.name, str(path), {"threads": threads or 1}).build()

        return Target(spec, "artifact", vla=vla, make_policy=make, precision=art.precision, runtime=backend.name,
                      estimate_precision=backend.roofline_precision(art.precision), notes=[note] if note else [])
    if (path / "config.json").is_file():
        from ..models import load_vla
        from ..runtime.policy import TorchPolicy

        vla = load_vla(path, allow_pickle=allow_pickle)
        return Target(spec, "checkpoint", vla=vla, make_policy=lambda: TorchPolicy(vla, threads=threads),
                      precision=_dtype_precision(vla), runtime="torch")
    from ..errors import CheckpointError

    raise CheckpointError(path, "not a checkpoint (no config.json), an artifact (no artifact.json) or "
                                f"'{PRESET_PREFIX}NAME' (presets: {', '.join(preset_names())})")


def _roofline_precision(target: Target) -> str | None:
    """The estimator's precision of what `target` runs in here (its backend's name for it, else as is)."""
    return get_backend(target.runtime).roofline_precision(target.precision) or target.precision


def measured_row(target: Target, m) -> dict:
    d = m.to_dict()
    return {"target": target.spec, "kind": "measured", "device": m.device, "precision": target.precision,
            "runtime": target.runtime, "p50_ms": d["latency_ms"]["p50"], "p99_ms": d["latency_ms"]["p99"],
            "inference_hz": d["inference_hz"], "control_hz": d["control_hz"], "chunk_size": m.chunk_size,
            "memory_bytes": d["memory"].get("cuda_max_allocated_bytes") or d["memory"]["peak_rss_bytes"],
            "memory_what": "peak GPU allocation" if d["memory"].get("cuda_max_allocated_bytes") else "peak process RSS",
            "fits": None, "breakdown_ms": m.breakdown_ms, "calibrated": None, "error": None}


def estimate_row(target: Target, e) -> dict:
    d = e.to_dict()
    return {"target": target.spec, "kind": "estimated", "device": e.device, "precision": e.precision,
            "runtime": e.runtime, "power_mode": e.power_mode, "p50_ms": d["latency_ms"], "p99_ms": None,
            "p50_ms_range": d["latency_ms_range"],
            "inference_hz": d["inference_hz"], "control_hz": d["control_hz"], "chunk_size": d["chunk_size"],
            "memory_bytes": e.memory.needed_bytes, "memory_what": "weights + KV cache + activations",
            "device_memory_bytes": e.memory.device_bytes, "fits": e.memory.fits, "breakdown_ms": d["per_group_ms"],
            "weight_only": d["inputs"]["precision"]["weight_only"], "calibrated": d["inputs"]["calibrated"],
            "error": None}


def error_row(target: Target, device: str, precision: str | None, runtime: str | None, error: str) -> dict:
    return {"target": target.spec, "kind": "estimated", "device": device, "precision": precision, "runtime": runtime,
            "p50_ms": None, "p99_ms": None, "inference_hz": None, "control_hz": None, "memory_bytes": None,
            "fits": None, "breakdown_ms": {}, "calibrated": None, "error": error}


def estimate_rows(target: Target, trace, profiles: list, precisions: list[str], runtime: str | None,
                  power_mode: str | None) -> tuple[list[dict], list[dict]]:
    """Estimate rows (and full estimates) for every profile x precision; unsupported combinations
    become rows with an error instead of stopping the others."""
    from .estimate import default_precision, estimate

    rows, full = [], []
    for hw in profiles:
        for prec in precisions or [target.estimate_precision or default_precision(hw, runtime)]:
            try:
                e = estimate(trace, hw, prec, runtime, power_mode)
            except VLACompressError as err:
                rows.append(error_row(target, hw.name, prec, runtime, str(err)))
                continue
            rows.append(estimate_row(target, e))
            full.append(e.to_dict())
    return rows, full


def profile_targets(specs: list[str], hardware: list[str], precisions: list[str], runtime: str | None = None,
                    power_mode: str | None = None, steps: int = 20, warmup: int = 3, measure: bool = True,
                    calibrate: bool = False, calibration_profile: str = "local-host", threads: int | None = None,
                    allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Measure and estimate every target (see the module docstring); returns the JSON-ready result."""
    from ..hardware import load_hardware
    from .measure import measure_policy
    from .trace import trace_policy_step

    say = progress or (lambda _msg: None)
    profiles = [load_hardware(h) for h in hardware]  # unknown names fail before anything runs
    if calibrate and not measure:
        raise ConfigError("--calibrate fits to measurements: it cannot be combined with --no-measure")
    result: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "targets": [], "rows": []}
    runs = []
    for spec in specs:
        say(f"loading {spec}")
        target = resolve_target(spec, allow_pickle=allow_pickle, threads=threads)
        entry: dict[str, Any] = {"target": spec, "kind": target.kind, "notes": list(target.notes),
                                 "measurement": None, "trace": None, "estimates": []}
        m = None
        if measure and target.make_policy is not None:
            say(f"measuring {spec}: {warmup} warm-up + {steps} timed steps")
            m = measure_policy(target.make_policy(), steps=steps, warmup=warmup)
            entry["measurement"] = m.to_dict()
            result["rows"].append(measured_row(target, m))
        trace = None
        if target.vla is not None:
            say(f"tracing {spec}")
            trace = trace_policy_step(target.vla)
            entry["trace"] = trace.summary()
            rows, full = estimate_rows(target, trace, profiles, precisions, runtime, power_mode)
            result["rows"] += rows
            entry["estimates"] = full
        if m is not None and trace is not None:
            runs.append((target, trace, m))
        result["targets"].append(entry)
    if calibrate:
        result["calibration"] = _calibrate(runs, calibration_profile, say)
        hw = load_hardware(calibration_profile)
        for target, trace, _ in runs:
            rows, full = estimate_rows(target, trace, [hw], [_roofline_precision(target)], target.runtime, None)
            result["rows"] += rows
            next(t for t in result["targets"] if t["target"] == target.spec)["estimates"] += full
    return result


def _calibrate(runs: list, profile_name: str, say: Callable[[str], None]) -> dict:
    """Fit factors per runtime over every measured run and store them beside `profile_name`
    (`local-host` is first regenerated from a fresh description of this machine)."""
    from ..hardware import load_hardware
    from .calibrate import calibrate
    from .host import describe_host, write_host_profile

    if not runs:
        raise ConfigError("--calibrate needs at least one measured target with a model to trace (a checkpoint, or "
                          "an artifact whose model can be rebuilt)")
    out: dict[str, Any] = {"profile": profile_name}
    if profile_name == "local-host":
        say("measuring this host (bandwidth, matmul, op overhead)")
        host = describe_host()
        out["host"] = host.to_dict()
        out["host_profile"] = str(write_host_profile(host))
    hw = load_hardware(profile_name, calibrated=False)
    by_runtime: dict[str, list] = {}
    for target, trace, m in runs:
        precision = _roofline_precision(target)
        by_runtime.setdefault(target.runtime, []).append((trace, m, precision, target.spec))
    out["fits"] = {}
    for rt, rt_runs in by_runtime.items():
        say(f"fitting efficiency factors for {rt} on {profile_name}")
        fit, path = calibrate(hw, rt_runs, runtime=rt)
        out["fits"][rt] = {**fit.to_dict(), "saved_to": str(path) if path else None}
    return out
