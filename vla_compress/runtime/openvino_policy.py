"""OpenVINO policy: runs an exported OpenVINO IR artifact directory, nothing else needed (no torch).

The artifact holds the IR (`<graph>.xml` + `.bin`), the manifest (`artifact.json`: how to drive the
graphs, the same I/O contract as the ONNX graphs they were converted from) and the checkpoint's
processor files. The decode loop of a tokens head and the Euler loop of a flow head are the ONNX
Runtime policy's (OnnxGraphs), run on OpenVINO compiled models.

Options (PolicySpec("openvino", artifact_dir, options)):
  threads              INFERENCE_NUM_THREADS per compiled model (default 1: evaluation workers share cores)
  device               OpenVINO device (default "CPU")
  inference_precision  INFERENCE_PRECISION_HINT (default "f32": what the parity gate was measured in;
                       OpenVINO's own CPU default is bf16 on AMX/AVX512-BF16 CPUs: pass "bf16" or
                       "default" to let it choose)
  execute_steps, allow_failed, verify, name   as every artifact policy (runtime/policy.py)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError
from .onnxruntime_policy import OnnxGraphs, check_flow_loop
from .policy import Policy, artifact_options, open_artifact

PRECISION_HINTS = ("f32", "bf16", "f16", "default")


class _Input:
    def __init__(self, name: str):
        self.name = name


class OpenVinoSession:
    """One compiled model behind the small part of an ORT InferenceSession OnnxGraphs uses:
    `get_inputs()` (objects with `.name`) and `run(output_names, feeds) -> [arrays]`."""

    def __init__(self, compiled: Any, input_names: list[str] | None = None):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        # a port may carry several tensor names (a graph input feeding a Convert gets that node's name
        # too): name it by the ONNX graph's input name (artifact.json io) when it has it
        known = set(input_names or ())
        self._inputs = [_Input(next((n for n in sorted(p.get_names()) if n in known), p.get_any_name()))
                        for p in compiled.inputs]

    def get_inputs(self) -> list[_Input]:
        return self._inputs

    def run(self, output_names: list[str], feeds: dict) -> list[np.ndarray]:
        res = self.request.infer(feeds, share_inputs=False, share_outputs=False)
        by_name = {n: v for port, v in res.items() for n in port.get_names()}
        return [by_name[n] for n in output_names]


def compile_config(threads: int, inference_precision: str) -> dict:
    if inference_precision not in PRECISION_HINTS:
        raise ConfigError(f"openvino runtime: inference_precision must be one of {PRECISION_HINTS}, "
                          f"got {inference_precision!r}")
    cfg = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if inference_precision != "default":
        cfg["INFERENCE_PRECISION_HINT"] = inference_precision
    return cfg


class OpenVinoGraphs(OnnxGraphs):
    """The artifact's IR compiled with OpenVINO, driven by OnnxGraphs' regression / greedy-decode / Euler loops."""

    def __init__(self, artifact, threads: int = 1, device: str = "CPU", inference_precision: str = "f32"):
        import openvino as ov

        self.artifact = artifact
        self.meta = artifact.manifest["model"]
        core = ov.Core()
        if device not in core.available_devices:
            raise ConfigError(f"OpenVINO device {device!r} is not available here; available: {core.available_devices}")
        cfg = compile_config(threads, inference_precision)
        self.sessions = {}
        for name, g in artifact.manifest["graphs"].items():
            path = artifact.file(g["file"])
            try:
                inputs = [i["name"] for i in artifact.manifest.get("io", {}).get(name, {}).get("inputs", [])]
                compiled = core.compile_model(core.read_model(str(path)), device, cfg)
                self.sessions[name] = OpenVinoSession(compiled, inputs)
            except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError from C++)
                raise ExportError(path, f"OpenVINO cannot load this IR ({type(e).__name__}: {str(e).strip()[:300]}); "
                                        "the file is corrupt or incomplete (re-export it)") from None
        if self.head == "flow":
            check_flow_loop(artifact, self.sessions)
        first = next(iter(self.sessions.values())).compiled
        self.device = device
        self.inference_precision = str(first.get_property("INFERENCE_PRECISION_HINT").get_type_name()) \
            if device == "CPU" else inference_precision
        self.providers = [f"OpenVINO {device}"]
        self.last_timing: dict[str, float] = {}
        self.decode_feeds = None


class OpenVinoPolicy(Policy):
    """Policy over an OpenVINO artifact directory (see the module docstring for options)."""

    runtime = "openvino"

    def __init__(self, artifact_dir: str | Path, threads: int = 1, device: str = "CPU",
                 inference_precision: str = "f32", execute_steps: int | None = None, allow_failed: bool = False,
                 verify: bool = False, name: str = "openvino"):
        super().__init__(execute_steps)
        self.artifact, self.processor = open_artifact(artifact_dir, "openvino", "openvino", "an OpenVINO artifact",
                                                      allow_failed, verify)
        self.name = name
        self.threads = threads
        self.graphs = OpenVinoGraphs(self.artifact, threads=threads, device=device,
                                     inference_precision=inference_precision)
        self.component_latencies_s: dict[str, list[float]] = {}

    @classmethod
    def from_spec(cls, spec: Any) -> "OpenVinoPolicy":
        """The policy of PolicySpec(runtime, artifact_dir, options) (see the module docstring)."""
        o = spec.options
        return cls(spec.path, threads=o.get("threads", 1), device=o.get("device", "CPU"),
                   inference_precision=o.get("inference_precision", "f32"), **artifact_options(o, "openvino"))

    def infer(self, observation: dict) -> np.ndarray:
        t0 = time.perf_counter()
        feeds = self.processor([observation])
        t1 = time.perf_counter()
        out = self.graphs.predict(feeds)
        t2 = time.perf_counter()
        chunk = self.processor.unnormalize(out["actions"][0])
        timing = {"preprocess_s": t1 - t0, **self.graphs.last_timing, "postprocess_s": time.perf_counter() - t2}
        for k, v in timing.items():
            if k.endswith("_s"):
                self.component_latencies_s.setdefault(k[:-2], []).append(v)
        return chunk

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        m = self.artifact.manifest
        d.update(family=m["model"]["family"], head=m["model"]["head"], precision=m["precision"], status=m["status"],
                 artifact=str(self.artifact.path), device=self.graphs.device, threads=self.threads,
                 inference_precision=self.graphs.inference_precision)
        return d
