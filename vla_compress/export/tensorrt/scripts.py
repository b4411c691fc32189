"""The build plan of a TensorRT artifact and the two ways to run it on a device.

build_plan.json  what to build: per graph the ONNX file, the engine file, the optimization
                 profile; builder flags, TF32, workspace, optimization level, timing cache.
build_engine.py  the TensorRT-Python builder (a copy of export/tensorrt/build_engine.py, which
                 vla-compress itself builds with), reading build_plan.json.
build_engine.sh  the same build as trtexec command lines, for devices with TensorRT's tools only.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .config import FP8_MIN_COMPUTE_CAPABILITY, TensorRTExportConfig

PLAN_VERSION = 1
PLAN_FILE, PY_SCRIPT, SH_SCRIPT, TIMING_CACHE, ENGINE_INFO = (
    "build_plan.json", "build_engine.py", "build_engine.sh", "timing.cache", "engine_info.json")
_QDQ_FLAGS = {"int8": "INT8", "fp8": "FP8", "int4": "INT4"}


def build_plan(config: TensorRTExportConfig, graphs: dict[str, dict], qdq_types: set[str]) -> dict:
    """graphs: {name: {"onnx": file, "profile": {input: {min, opt, max}}}}; qdq_types: the quantized
    types found in the graphs (each needs its builder flag, whatever the precision)."""
    flags = list(config.builder_flags)
    for t in sorted(qdq_types):
        if _QDQ_FLAGS[t] not in flags:
            flags.append(_QDQ_FLAGS[t])
    return {
        "plan_version": PLAN_VERSION, "precision": config.precision, "flags": flags,
        "tf32": config.precision != "fp32",  # the fp32 engine is the strict reference: no TF32 matmuls
        "workspace_mib": config.workspace_mib, "optimization_level": config.optimization_level,
        "timing_cache": TIMING_CACHE,
        "min_compute_capability": list(FP8_MIN_COMPUTE_CAPABILITY) if "FP8" in flags else None,
        # "inputs" keeps the graph's input order (the JSON file is written with sorted keys)
        "graphs": {name: {"onnx": g["onnx"], "engine": f"{name}.engine", "inputs": list(g["profile"]),
                          "profile": g["profile"]} for name, g in graphs.items()},
    }


def _shapes(graph: dict, key: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in graph['profile'][name][key])}" for name in graph["inputs"])


def trtexec_command(plan: dict, graph: str) -> list[str]:
    """The trtexec arguments that build `graph` as build_engine.py does (TensorRT 10 flag names)."""
    g = plan["graphs"][graph]
    cmd = ["trtexec", f"--onnx={g['onnx']}", f"--saveEngine={g['engine']}"]
    if g["profile"]:
        cmd += [f"--minShapes={_shapes(g, 'min')}", f"--optShapes={_shapes(g, 'opt')}",
                f"--maxShapes={_shapes(g, 'max')}"]
    cmd += [f"--{flag.lower()}" for flag in plan["flags"]]
    if not plan["tf32"]:
        cmd.append("--noTF32")
    cmd += [f"--memPoolSize=workspace:{plan['workspace_mib']}M",
            f"--builderOptimizationLevel={plan['optimization_level']}",
            f"--timingCacheFile={plan['timing_cache']}", "--skipInference"]
    return cmd


def build_sh(plan: dict, header: str) -> str:
    """A POSIX shell script running trtexec once per graph from the artifact directory."""
    lines = ["#!/bin/sh", *[f"# {line}" if line else "#" for line in header.splitlines()],
             "# Engines are not portable: build them on the device (and TensorRT version) that runs them.",
             "# Set TRTEXEC to trtexec's path if it is neither on PATH nor in JetPack's /usr/src/tensorrt/bin.",
             "set -eu", 'cd "$(dirname "$0")"',
             'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"']
    for graph in plan["graphs"]:
        args = trtexec_command(plan, graph)[1:]
        lines.append(f'echo "building {plan["graphs"][graph]["engine"]}"')
        lines.append('"$TRTEXEC" \\\n' + " \\\n".join(f"  {shlex.quote(a)}" for a in args))
    return "\n".join(lines) + "\n"


def build_script_source() -> str:
    """The self-contained builder shipped as build_engine.py (this package's own module)."""
    from . import build_engine

    return Path(build_engine.__file__).read_text(encoding="utf-8")
