"""Measured latency, control rate and memory of any Policy on this machine.

A policy step is one `infer(observation)` (observation -> action chunk), timed with
time.perf_counter after warm-up, on random but well-formed observations (random image pixels and
state, a real instruction), cycled. Reported:
- latency percentiles (p50/p90/p99; with N steps, p99 is close to the slowest step);
- inference rate = 1 / p50, and control rate = executed actions per inference / p50: a policy
  that predicts a chunk of K actions and executes all of them runs the robot at K / latency
  (with `execute_steps` = E < K, at E / latency);
- per-component time: for torch policies forward hooks on the named components (vision encoder,
  projector(s), backbone prefill, backbone decode steps, action head; "other" is the rest of the
  step: pre/post-processing and glue); for the ONNX Runtime policy its own per-graph timing
  (preprocess, prefill, decode, postprocess or policy_step);
- memory: the process's peak resident set size *during the timed steps* (Linux VmHWM after
  resetting it through /proc/self/clear_refs; it includes the weights and everything else already
  resident, i.e. what the process needs to run the policy). Where the reset is not allowed, the
  lifetime peak (getrusage ru_maxrss), labelled as such. On a CUDA device also
  torch.cuda.max_memory_allocated over the timed steps;
- on a Jetson, the nvpmodel power mode and the mean board power over the timed steps.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import jetson
from .trace import component_group


@dataclass
class Measurement:
    """Measured on this machine (label "measured"); times in milliseconds."""
    policy: dict[str, Any]
    steps: int
    warmup: int
    latencies_ms: list[float]
    chunk_size: int
    executed_per_inference: int
    breakdown_ms: dict[str, float]  # median per component group over the timed steps
    memory: dict[str, Any]
    device: str
    power: dict[str, Any] | None = None
    power_mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def inference_hz(self) -> float:
        return 1e3 / self.p50_ms

    @property
    def control_hz(self) -> float:
        return self.executed_per_inference * 1e3 / self.p50_ms

    def to_dict(self) -> dict:
        lat = self.latencies_ms
        return {"kind": "measured", "device": self.device, "policy": self.policy, "steps": self.steps,
                "warmup": self.warmup,
                "latency_ms": {"p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99),
                               "mean": float(np.mean(lat)), "min": float(np.min(lat)), "max": float(np.max(lat))},
                "inference_hz": self.inference_hz, "control_hz": self.control_hz, "chunk_size": self.chunk_size,
                "executed_per_inference": self.executed_per_inference, "breakdown_ms": self.breakdown_ms,
                "memory": self.memory, "power": self.power, "power_mode": self.power_mode, **self.extra}


def example_observations(policy, n: int = 4, seed: int = 0) -> list[dict]:
    """`n` random, well-formed observations for `policy` (random pixels and state, real instructions)."""
    from .counting import dummy_observation

    vla = getattr(policy, "vla", None)
    processor = getattr(policy, "processor", None)
    if vla is not None:
        template = dummy_observation(vla)
    elif callable(getattr(processor, "observation_template", None)):  # an artifact processor that knows its inputs
        template = processor.observation_template()
    else:
        raise ConfigError(f"cannot build observations for a {type(policy).__name__}; pass observations=")
    rng = np.random.default_rng(seed)
    instructions = ["pick up the object and place it at the goal", "open the door", "push the button",
                    "reach to the target location"]
    out = []
    for i in range(n):
        obs = {"images": {k: rng.integers(0, 256, v.shape, dtype=np.uint8) for k, v in template["images"].items()},
               "instruction": instructions[i % len(instructions)]}
        if template.get("state") is not None:
            obs["state"] = rng.uniform(-0.5, 0.5, np.shape(template["state"])).astype(np.float32)
        out.append(obs)
    return out


class _ComponentTimer:
    """Forward hooks timing each named component of a torch VLA, per breakdown group."""

    def __init__(self, vla, cuda: bool):
        self.totals: dict[str, float] = {}
        self.open: list[tuple[str, float]] = []
        self.calls: dict[str, int] = {}
        self.cuda = cuda
        self.hooks = []
        for name, mod in vla.components().items():
            self.hooks += [mod.register_forward_pre_hook(lambda *_, n=name: self._pre(n)),
                           mod.register_forward_hook(lambda *_, n=name: self._post(n))]

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _pre(self, name: str) -> None:
        self._sync()
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        self.open.append((component_group(name, call), time.perf_counter()))

    def _post(self, name: str) -> None:
        self._sync()
        group, t0 = self.open.pop()
        dt = time.perf_counter() - t0
        self.totals[group] = self.totals.get(group, 0.0) + dt
        for i, (g, t) in enumerate(self.open):  # a nested component's time is not its parent's
            self.open[i] = (g, t + dt)

    def step(self) -> dict[str, float]:
        out, self.totals, self.calls = self.totals, {}, {}
        return out

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _hwm_bytes() -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _rss_bytes() -> int | None:
    try:
        m = re.search(r"VmRSS:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _cuda_device(policy) -> Any:
    if "torch" not in sys.modules or getattr(policy, "vla", None) is None:
        return None
    try:
        dev = next(policy.vla.parameters()).device
    except StopIteration:
        return None
    return dev if dev.type == "cuda" else None


def measure_policy(policy, observations: list[dict] | None = None, steps: int = 20, warmup: int = 3,
                   device: str | None = None) -> Measurement:
    """Time `steps` policy steps of `policy` after `warmup` untimed ones (see the module docstring)."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    obs = observations or example_observations(policy, 4)
    chunk_size = 0
    for i in range(max(warmup, 1)):
        chunk_size = len(np.asarray(policy.infer(obs[i % len(obs)])))
    execute = getattr(policy, "execute_steps", None)
    executed = chunk_size if execute is None else min(execute, chunk_size)
    cuda = _cuda_device(policy)
    timer = _ComponentTimer(policy.vla, cuda is not None) if getattr(policy, "vla", None) is not None else None
    ort = getattr(policy, "component_latencies_s", None)
    if isinstance(ort, dict):
        ort.clear()
    if cuda is not None:
        import torch

        torch.cuda.synchronize(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)
    rss_before = _rss_bytes()
    reset = _reset_hwm()
    lat, groups = [], []
    try:
        with jetson.PowerSampler() as power:
            for i in range(steps):
                t0 = time.perf_counter()
                policy.infer(obs[i % len(obs)])
                lat.append((time.perf_counter() - t0) * 1e3)
                if timer is not None:
                    groups.append(timer.step())
    finally:
        if timer is not None:
            timer.remove()
    hwm = _hwm_bytes()
    memory: dict[str, Any] = {"rss_before_bytes": rss_before, "rss_after_bytes": _rss_bytes()}
    if reset and hwm is not None:
        memory.update(peak_rss_bytes=hwm, peak_rss_method="VmHWM reset before the timed steps (/proc/self/clear_refs): "
                      "peak resident memory of the whole process during them, weights included")
    else:
        import resource

        memory.update(peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      peak_rss_method="getrusage ru_maxrss: peak resident memory of the process since it started "
                                      "(may include earlier work)")
    if cuda is not None:
        import torch

        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(cuda))
    breakdown = _breakdown(groups, lat) if timer is not None else _ort_breakdown(ort)
    return Measurement(policy=_describe(policy), steps=steps, warmup=warmup, latencies_ms=lat, chunk_size=chunk_size,
                       executed_per_inference=executed, breakdown_ms=breakdown, memory=memory,
                       device=device or _device_label(cuda, timer is not None), power=power.result(),
                       power_mode=jetson.power_mode() if jetson.is_jetson() else None)


def _breakdown(groups: list[dict[str, float]], lat_ms: list[float]) -> dict[str, float]:
    names = sorted({g for step in groups for g in step})
    per = {g: float(np.median([step.get(g, 0.0) * 1e3 for step in groups])) for g in names}
    # "other": the step's time outside every component (pre/post-processing, glue)
    outside = float(np.median([t - sum(step.values()) * 1e3 for t, step in zip(lat_ms, groups)]))
    per["other"] = outside + per.get("other", 0.0)
    return per


def _ort_breakdown(ort: dict | None) -> dict[str, float]:
    if not ort:
        return {}
    return {k: float(np.median(v) * 1e3) for k, v in ort.items() if v}


def _describe(policy) -> dict:
    try:
        return policy.describe()
    except Exception:  # a description is nice to have, never a reason to lose a measurement
        return {"name": getattr(policy, "name", type(policy).__name__)}


def _device_label(cuda, torch_policy: bool) -> str:
    from .host import describe_host

    if cuda is not None:
        import torch

        return f"this host: {torch.cuda.get_device_name(cuda)}"
    return f"this host: {describe_host(measure=False).short(torch_threads=torch_policy)}"
