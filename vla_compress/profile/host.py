"""The local machine: what it is (CPU, cores, memory, GPU) and a few quick measurements of what it
does (memory bandwidth, matmul throughput per precision, per-op overhead), and a device profile
(`local-host`) generated from them so the estimator and the calibration have a profile for it.

Measurements are short (about a second in all) and report the best of a few repetitions, as
STREAM does: the best run is the one least disturbed by other work on the machine.
- bandwidth: numpy `add` (a = b + c: 2 loads + 1 store per element, the traffic of STREAM triad)
  on float64 arrays of at least 2x the L3 cache each, single-threaded. Counted as 24 bytes per
  element (STREAM's convention; write-allocate traffic not counted). One core's achievable
  bandwidth: multi-threaded runtimes may reach more.
- matmul: torch.mm of square fp32 (and bf16 where the CPU has AVX512-BF16/AMX) matrices and
  torch._int_mm for int8, at torch's current thread count: achieved, not datasheet, throughput.
- op overhead: one tiny torch.add (1 element), i.e. eager dispatch cost per kernel.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import jetson


@dataclass
class HostInfo:
    cpu_model: str
    logical_cores: int
    usable_cores: int
    torch_threads: int | None
    memory_bytes: int
    l3_bytes: int | None
    cpu_flags: list[str] = field(default_factory=list)
    bandwidth_gbs: float | None = None
    matmul_tflops: dict[str, float] = field(default_factory=dict)
    op_overhead_us: float | None = None
    gpu: dict[str, Any] | None = None
    jetson_power_mode: str | None = None
    platform: str = ""
    methods: dict[str, str] = field(default_factory=dict)

    def short(self, torch_threads: bool = True) -> str:
        threads = f", {self.torch_threads} torch threads" if self.torch_threads and torch_threads else ""
        gpu = f", GPU {self.gpu['name']}" if self.gpu else ""
        return f"{self.cpu_model} ({self.usable_cores} cores usable{threads}{gpu})"

    def to_dict(self) -> dict:
        return asdict(self)


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    m = re.search(r"^(model name|Model|Hardware)\s*:\s*(.+)$", text, re.M)
    f = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
    return (m.group(2).strip() if m else model), (f.group(2).split() if f else [])


def _memory_bytes() -> int:
    try:
        kb = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        if kb:
            return int(kb.group(1)) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return 0


def _l3_bytes() -> int | None:
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (d / "level").read_text().strip() == "3":
                size = (d / "size").read_text().strip().upper()
                mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size[-1], 1)
                return int(size.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return None


def _best_of(fn: Callable[[], None], budget_s: float, max_reps: int = 20, min_reps: int = 3) -> float:
    """Best wall time of `fn` over repetitions until `budget_s` is spent (at least `min_reps`)."""
    fn()  # warm-up (page faults, kernel selection)
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < min_reps or (reps < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def stream_bandwidth_gbs(array_bytes: int | None = None, budget_s: float = 0.6) -> float:
    """Best-of STREAM-add bandwidth in GB/s (see the module docstring)."""
    import numpy as np

    l3 = _l3_bytes() or 32 * 1024**2
    n = (array_bytes or max(64 * 1024**2, 2 * l3)) // 8
    a, b, c = np.zeros(n), np.ones(n), np.full(n, 2.0)  # written once: pages are resident
    t = _best_of(lambda: np.add(b, c, out=a), budget_s)
    return 3 * 8 * n / t / 1e9


def matmul_tflops(precision: str, n: int = 1024, budget_s: float = 0.25) -> float | None:
    """Best-of square matmul throughput in TFLOPS (TOPS for int8) with torch; None if unsupported."""
    import torch

    try:
        if precision == "int8":
            if not hasattr(torch, "_int_mm"):
                return None
            a = torch.randint(-64, 64, (n, n), dtype=torch.int8)
            fn = lambda: torch._int_mm(a, a)  # noqa: E731
        else:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            a = torch.randn(n, n).to(dtype)
            fn = lambda: torch.mm(a, a)  # noqa: E731
        t = _best_of(fn, budget_s)
    except (RuntimeError, NotImplementedError):
        return None
    return 2 * n**3 / t / 1e12


def op_overhead_us(reps: int = 2000) -> float:
    """Median wall time of one tiny eager torch op (dispatch + launch overhead per kernel), in µs."""
    import statistics

    import torch

    x, y = torch.ones(1), torch.ones(1)
    for _ in range(200):
        torch.add(x, y)
    per_batch = []
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(reps // 10):
            torch.add(x, y)
        per_batch.append((time.perf_counter() - t0) / (reps // 10))
    return statistics.median(per_batch) * 1e6


def _gpu() -> dict | None:
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return {"name": p.name, "memory_bytes": int(p.total_memory), "compute_capability": f"{p.major}.{p.minor}"}
    except Exception:  # a broken CUDA install should not stop a CPU description
        return None
    return None


def describe_host(measure: bool = True, quick: bool = False) -> HostInfo:
    """What this machine is; with `measure`, also its bandwidth, matmul throughput and op overhead
    (about a second; `quick` shrinks the tests to a few hundred ms for tests)."""
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        pass
    info = HostInfo(cpu_model=model, logical_cores=os.cpu_count() or 1, usable_cores=usable, torch_threads=threads,
                    memory_bytes=_memory_bytes(), l3_bytes=_l3_bytes(), cpu_flags=[f for f in flags if f in _FLAGS],
                    gpu=_gpu(), jetson_power_mode=jetson.power_mode() if jetson.is_jetson() else None,
                    platform=f"{platform.system()} {platform.machine()} python {platform.python_version()}")
    if not measure:
        return info
    array = 16 * 1024**2 if quick else None
    info.bandwidth_gbs = stream_bandwidth_gbs(array, budget_s=0.15 if quick else 0.6)
    n, budget = (256, 0.05) if quick else (1024, 0.25)
    precisions = ["fp32", "int8"] + (["bf16"] if {"avx512_bf16", "amx_bf16"} & set(flags) else [])
    for p in precisions:
        v = matmul_tflops(p, n, budget)
        if v:
            info.matmul_tflops[p] = v
    info.op_overhead_us = op_overhead_us(500 if quick else 2000)
    mib = (array or max(64 * 1024**2, 2 * (info.l3_bytes or 32 * 1024**2))) >> 20
    info.methods = {
        "bandwidth_gbs": f"numpy add on 3 x {mib} MiB float64 arrays, single thread, best of repetitions, "
                         "24 bytes/element",
        "matmul_tflops": f"torch.mm / torch._int_mm of {n}x{n} matrices, {threads} threads, best of repetitions",
        "op_overhead_us": "median time of one 1-element torch.add (eager dispatch per kernel)",
    }
    return info


_FLAGS = {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimd",
          "asimddp", "sve", "bf16", "i8mm"}


def host_profile_dict(host: HostInfo, name: str = "local-host") -> dict:
    """A hardware/*.yaml profile (schema v1) for this host, from its measured figures."""
    if host.bandwidth_gbs is None or "fp32" not in host.matmul_tflops:
        from ..errors import ConfigError

        raise ConfigError("a host profile needs measured bandwidth and fp32 matmul throughput "
                          "(describe_host(measure=True))")
    when = time.strftime("%Y-%m-%d")
    def src(what: str) -> str:
        return f"measured on this host {when} by vla_compress.profile.host: {host.methods.get(what, what)}"

    peaks = {p: {"value": round(v, 6), "source": src("matmul_tflops") + " (achieved, not a datasheet peak)"}
             for p, v in host.matmul_tflops.items()}
    torch_prec = [p for p in ("fp32", "bf16") if p in peaks]
    ort_prec = [p for p in ("fp32", "int8") if p in peaks]
    return {
        "schema_version": 1, "name": name, "display_name": f"this host: {host.cpu_model}", "kind": "cpu",
        "memory_gb": {"value": round(host.memory_bytes / 1e9, 3), "source": "MemTotal in /proc/meminfo"},
        "bandwidth_gbs": {"value": round(host.bandwidth_gbs, 3), "source": src("bandwidth_gbs")},
        "cores": {"value": host.usable_cores, "source": "os.sched_getaffinity (cores this process may use)"},
        "peak_tflops": peaks,
        "runtimes": {"torch": {"precisions": torch_prec},
                     "onnxruntime": {"precisions": ort_prec, "weight_only": ["int4"],
                                     "notes": "int4 through MatMulNBits (weight-only)."}},
        "efficiency": {
            "eta_compute": {"default": {"value": 0.8, "source": "default for measured peaks (large matmuls reach about "
                                                                 "them; smaller ones less); calibrate"}},
            "eta_memory": {"default": {"value": 0.9, "source": "default for a measured (STREAM) bandwidth; calibrate"}},
            "launch_overhead_us": {"value": round(host.op_overhead_us or 5.0, 3), "source": src("op_overhead_us")},
        },
        "notes": [f"Generated from `describe_host()` on {when}: {host.short()}. Regenerate on another machine.",
                  "Peaks and bandwidth are achieved figures measured here, so efficiency factors near 1 are expected."],
    }


def write_host_profile(host: HostInfo, directory: str | Path | None = None, name: str = "local-host") -> Path:
    """Write the host profile to `directory`/`name`.yaml (default: the hardware directory) and check it loads.
    A calibration file beside it is kept (recalibrate after regenerating)."""
    import yaml

    from ..fileio import write_text
    from ..hardware import hardware_dir, load_hardware

    path = Path(directory or hardware_dir()) / f"{name}.yaml"
    header = ("# Generated by vla-compress (profile/host.py) from measurements of this machine: not a datasheet.\n"
              "# Every number is {value, source}.\n")
    write_text(path, header + yaml.safe_dump(host_profile_dict(host, name), sort_keys=False, width=120))
    load_hardware(path, calibrated=False)  # raises if the generated file does not validate
    return path
