"""The TensorRT exporter: ONNX graph -> TensorRT-ready graph -> build files -> (engine) -> parity.

TensorRT engines are built from the ONNX artifact's graphs, never traced separately, so the
I/O contract (names, symbolic axes recorded in its artifact.json) is the ONNX one and the
ONNX Runtime policy's decode loop drives both. Steps of `export`:
  1. the ONNX graphs: from `base` (an ONNX artifact of this model) or traced now in fp32;
  2. the graph TensorRT builds: fp32/fp16 use the fp32 graph; int8/fp8 get symmetric Q/DQ from
     calibration (quantize.py), or keep a quantized base's own Q/DQ as they are;
  3. the TensorRT-readiness check of every graph (readiness.py);
  4. optimization profiles from the io axes (profiles.py), build_plan.json, build_engine.py and
     build_engine.sh (scripts.py): what a Jetson user runs on the device;
  5. the engines, when tensorrt imports and a CUDA GPU is present (config.build_engine).
Artifact layout: artifact.json, <graph>.onnx (+ .onnx.data), build_plan.json, build_engine.py,
build_engine.sh, the processor files, and once built <graph>.engine, timing.cache, engine_info.json.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...fileio import write_json, write_text
from ..artifact import Artifact, hash_files
from ..base import ExportInputs, Exporter
from ..family import weights_fingerprint
from ..parity import ParityReport, compare
from ..template import ExportJob, QuantizationCarryWarning
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .config import TensorRTExportConfig
from .profiles import axis_ranges, graph_profile
from .readiness import ReadinessReport, check_graph, require_ready
from .scripts import PLAN_FILE, PY_SCRIPT, SH_SCRIPT, build_plan, build_script_source, build_sh, trtexec_command


def engine_support() -> tuple[bool, str]:
    """(True, "") when engines can be built here: full tensorrt importable and a CUDA device."""
    from .build_engine import BuildError, cuda_device

    try:
        import tensorrt as trt
    except ImportError:
        return False, "the tensorrt package is not installed here"
    if not hasattr(trt, "Builder"):
        return False, "the installed tensorrt package has no Builder (lean runtime)"
    try:
        cuda_device(0)
    except BuildError as e:
        return False, str(e)
    return True, ""


class TensorRTExporter(Exporter):
    """Engines (or their build files) from this model's ONNX graphs; see the module docstring.

    Inputs (ExportInputs): base (an ONNX artifact of this model: fp32, or a Q/DQ graph kept as is for
    int8/fp8; default: trace the fp32 graphs now), calibration (int8/fp8 from fp32), example,
    source, threads (calibration runs), log (engine build progress). A graph that is not
    TensorRT-ready raises ExportError listing the offending ops, after the artifact is written,
    marked failed, for inspection.
    """

    format = "tensorrt"
    label = "TensorRT"
    config_cls = TensorRTExportConfig

    def prepare(self, job: ExportJob) -> None:
        job.manifest.update(readiness={}, engine=None)

    def write(self, job: ExportJob, stage: Path, tmp: Path) -> None:
        from .build_engine import build_engines

        vla, config, inputs, manifest = job.vla, job.config, job.inputs, job.manifest
        carry = config.carry_quantization and config.precision == "int8"
        onnx_art = self._onnx_graphs(vla, inputs.base, tmp, inputs.example or inputs.calibration, inputs.source,
                                     job.meta, carry)
        manifest["onnx_base"] = {"path": str(onnx_art.path.resolve()) if inputs.base is not None else None,
                                 "precision": onnx_art.precision, "opset": onnx_art.manifest.get("opset")}
        reports = self._engine_graphs(vla, job.family, config, onnx_art, stage, tmp, inputs.calibration, inputs.threads,
                                manifest)
        job.notes["reports"] = reports
        ranges = axis_ranges(config, onnx_art.manifest)
        profiles = {n: graph_profile(manifest["io"][n]["inputs"], ranges) for n in manifest["graphs"]}
        qdq = {t for r in reports.values() for t, n in r.qdq.items() if n}
        plan = build_plan(config, {n: {"onnx": g["file"], "profile": profiles[n]}
                                   for n, g in manifest["graphs"].items()}, qdq)
        self._write_build_files(stage, plan, manifest)
        manifest["profiles"] = {"axes": {k: list(v) for k, v in ranges.items()}, "graphs": profiles}
        manifest["processor_files"] = job.family.save_processor(vla, stage)  # before a (slow) engine build
        if all(r.ok for r in reports.values()):
            manifest["engine"], manifest["engine_note"] = self._maybe_build(config, plan, stage, inputs.log,
                                                                            build_engines)
        else:
            manifest["status"] = "failed"
            manifest["error"] = "not TensorRT-ready: " + "; ".join(
                f"{p['op']} x{p['count']}" for r in reports.values() for p in r.problems)

    def finish(self, job: ExportJob) -> None:
        require_ready(job.notes["reports"], job.out_dir)

    def failure_message(self, job: ExportJob, error: Exception) -> str:
        from .build_engine import BuildError

        if isinstance(error, BuildError):
            return f"TensorRT engine build ({job.config.precision}) failed: {error}"
        return super().failure_message(job, error)

    # --- stages ------------------------------------------------------------------------------
    def _onnx_graphs(self, vla: Any, base: Artifact | str | Path | None, tmp: Path, example: list[dict] | None,
                     source: str | Path | None, meta: dict, carry: bool = True) -> Artifact:
        """The ONNX artifact the engines are built from: `base` (checked to be this model's) or fp32
        traced now (`carry`: torch-quantized layers keep their scheme, see export/onnx/carry.py)."""
        from ..onnx import OnnxExportConfig
        from ..onnx.exporter import OnnxExporter

        if base is None:
            with warnings.catch_warnings():  # what is not carried is reported by this exporter, for TensorRT
                warnings.simplefilter("ignore", QuantizationCarryWarning)
                return OnnxExporter().export(vla, OnnxExportConfig(carry_quantization=carry), tmp / "onnx-fp32",
                                             ExportInputs(example=example, source=source))
        base = base if isinstance(base, Artifact) else Artifact.load(base)
        if base.format != "onnx":
            raise ConfigError(f"{base.path}: base must be an ONNX artifact, is {base.format!r}")
        base.require_usable()
        if base.manifest.get("model") != meta or base.manifest["source"].get("weights_sha256") != weights_fingerprint(vla):
            raise ConfigError(f"{base.path}: base artifact was exported from different weights than this model")
        return base

    def _engine_graphs(self, vla: Any, family: Any, config: TensorRTExportConfig, onnx_art: Artifact, stage: Path,
                 tmp: Path, calibration: list[dict] | None, threads: int, manifest: dict) -> dict[str, ReadinessReport]:
        """Write the graphs TensorRT builds into `stage`, check each, record them in the manifest."""
        from ..onnx.quantize import op_summary
        from ..onnx.steps import calibration_feeds
        from .quantize import prepare_graph

        from_fp32 = onnx_art.precision == "fp32"
        precision = config.precision if from_fp32 else "fp32"  # a quantized base keeps its own Q/DQ
        carried = {n: list(g.get("carried_nodes", [])) for n, g in onnx_art.manifest["graphs"].items()}
        if from_fp32 and any(carried.values()) and config.precision != "int8":
            raise ConfigError(f"{onnx_art.path}: this ONNX base carries torch-quantized int8/int4 layers, which a "
                              f"TensorRT {config.precision} engine cannot compute as they are: build int8, or give a "
                              "base exported with carry_quantization: false")
        feeds: dict[str, list[dict]] = {}
        if from_fp32 and config.needs_qdq:
            if not calibration:
                raise ConfigError(f"tensorrt {config.precision} export needs calibration observations "
                                  "(pass calibration=[observation, ...])")
            graphs = {n: (onnx_art.file(g["file"]), 0) for n, g in onnx_art.manifest["graphs"].items()}
            # the ONNX exporter's calibration feeds: prefill inputs per observation and, for a tokens
            # head, the decode inputs (KV caches) its own greedy loop really produces
            feeds = calibration_feeds(vla, family, tmp, graphs, list(calibration)[: config.calibration_limit], threads)
        reports = {}
        for name, g in onnx_art.manifest["graphs"].items():
            dst = stage / g["file"]
            src = onnx_art.file(g["file"])
            if carried.get(name) and from_fp32:  # int4 MatMulNBits -> float MatMul (quantize.INT4_NOTE)
                src, back = _float_int4(src, tmp / f"int4-float-{g['file']}", bool(g.get("external_data")))
                carried[name] = [n for n in carried[name] if n not in back]
            prepare_graph(precision, src, dst, feeds.get(name), per_channel=config.per_channel,
                          external=bool(g.get("external_data")), exclude=carried.get(name, []) if from_fp32 else [])
            reports[name] = check_graph(dst, config.precision)
            manifest["readiness"][name] = reports[name].to_dict()
            manifest["graphs"][name] = {"file": g["file"], "engine": f"{name}.engine",
                                        "external_data": bool(g.get("external_data")), "ops": op_summary(dst)}
            manifest["io"][name] = onnx_art.manifest["io"][name]
        summary = tensorrt_carry_summary(onnx_art.manifest.get("quantization_carry"), config)
        if summary is not None:
            manifest["quantization_carry"] = summary
        return reports

    def _write_build_files(self, stage: Path, plan: dict, manifest: dict) -> None:
        write_json(stage / PLAN_FILE, plan)
        write_text(stage / PY_SCRIPT, build_script_source())
        header = (f"TensorRT engines of a {manifest['model']['family']} {manifest['model']['head']}-head policy, "
                  f"precision {plan['precision']} (builder flags: {', '.join(plan['flags']) or 'none'}).\n"
                  f"Generated by vla-compress {manifest['versions'].get('vla-compress', '?')} on {manifest['created']}; "
                  f"the same build as {PY_SCRIPT} (python3 {PY_SCRIPT}).")
        write_text(stage / SH_SCRIPT, build_sh(plan, header))
        for script in (PY_SCRIPT, SH_SCRIPT):
            os.chmod(stage / script, 0o755)
        manifest["build"] = {"plan": PLAN_FILE, "python": PY_SCRIPT, "trtexec": SH_SCRIPT,
                             "trtexec_commands": {n: trtexec_command(plan, n) for n in plan["graphs"]}}

    def _maybe_build(self, config: TensorRTExportConfig, plan: dict, stage: Path, log, build_engines) -> tuple:
        """(engine info, note): build now when asked/possible, else say why not."""
        if config.build_engine == "never":
            return None, "engine build not requested (build_engine='never'): run build_engine.py on the device"
        ok, why = engine_support()
        if not ok:
            if config.build_engine == "always":
                raise ConfigError(f"cannot build TensorRT engines here: {why}")
            return None, f"engine not built here ({why}): run build_engine.py or build_engine.sh on the device"
        timing = Path(config.timing_cache) if config.timing_cache else None
        return build_engines(plan, stage, timing_cache=timing, log=log or (lambda m: None)), None

    # --- validation ----------------------------------------------------------------------------
    def validate(self, artifact: Artifact, vla: Any, observations: list[dict], threads: int = 1) -> ParityReport:
        """Compare with torch on `observations`: the engines when they exist and run here (status
        ok/failed), else the exact graph TensorRT builds, run in ONNX Runtime (`graph_parity`; the
        status stays "unvalidated" when it passes, since no engine was checked, "failed" when not)."""
        import time

        from ...runtime.onnxruntime_policy import OnnxGraphs
        from ...runtime.tensorrt_policy import TensorRTGraphs, engine_runnable

        m = artifact.manifest
        ready = {n: ReadinessReport(**{k: v for k, v in r.items() if k != "ok"}) for n, r in m.get("readiness", {}).items()}
        require_ready(ready, artifact.path)
        family = source_family(artifact, vla, observations)
        config = TensorRTExportConfig.from_dict(m["config"])
        head = m["model"]["head"]
        ref, torch_s = torch_reference(family, vla, observations)
        processor = family.load_processor(artifact.path)
        t1 = time.perf_counter()
        graph = compare(head, ref, _run(OnnxGraphs(artifact, threads, ["CPUExecutionProvider"]), processor,
                                        observations, ref, config.max_batch), config.tolerance_for(head))
        t2 = time.perf_counter()
        graph.timing_s = {"torch": torch_s, "onnxruntime": t2 - t1}
        m["graph_parity"] = graph.to_dict()
        runnable, why = engine_runnable(artifact)
        if not runnable:
            m["parity"], m["status"] = None, ("unvalidated" if graph.passed else "failed")
            m["validation_note"] = f"engine not validated: {why}; the graph TensorRT builds passed ONNX Runtime parity" \
                if graph.passed else f"the graph TensorRT builds failed parity in ONNX Runtime: {'; '.join(graph.failures)}"
            m["files"] = hash_files(artifact.path)
            artifact.save()
            return graph
        got = run_or_fail(artifact, "TensorRT",
                          lambda: _run(TensorRTGraphs(artifact), processor, observations, ref, config.max_batch))
        m.pop("validation_note", None)
        return record(artifact, ref, got, config.tolerance_for, {"torch": torch_s, "tensorrt": time.perf_counter() - t2})


def _float_int4(src: Path, dst: Path, external: bool) -> tuple[Path, list[str]]:
    """(`src`, []) or (`dst`, names): `src` with its carried int4 MatMulNBits as float MatMuls saved at `dst`."""
    import contextlib

    import onnx

    from ..onnx.quantize import save_model
    from .quantize import nbits_to_float

    model = onnx.load(str(src))
    names = nbits_to_float(model)
    if not names:
        return src, []
    with contextlib.chdir(dst.parent):
        save_model(model, dst, external)
    return dst, names


def tensorrt_carry_summary(onnx_summary: dict | None, config: TensorRTExportConfig) -> dict | None:
    """The ONNX graphs' carry summary restated for the TensorRT engine: int4 layers are not carried
    (quantize.INT4_NOTE); for a float/FP8 engine no torch-quantized layer is."""
    from .quantize import INT4_NOTE

    if not onnx_summary:
        return None
    out = {k: v for k, v in onnx_summary.items() if k != "runtime_note"}
    out["layers"] = {n: dict(e) for n, e in onnx_summary["layers"].items()}
    out["not_carried"] = dict(onnx_summary["not_carried"])
    for n, e in list(out["layers"].items()):
        if e["scheme"] == "int4_weight_only":
            out["not_carried"][n] = INT4_NOTE
            del out["layers"][n]
        elif e["scheme"] == "int8_static":
            e["tensorrt"] = "symmetric INT8 Q/DQ on the input (calibrated scale) and the weight (per channel)"
        elif e["scheme"] == "int8_weight_only":
            e["tensorrt"] = "INT8 weight-only (DequantizeLinear on the weight), float16 activations"
        else:
            e["tensorrt"] = "INT8 weights (DequantizeLinear), torch's per-token input quantization as float ops"
    if config.precision != "int8":
        why = (f"a TensorRT {config.precision} engine computes in {'FP8' if config.precision == 'fp8' else 'float'}: "
               "built from the dequantized weight (build int8 to keep torch's int8/int4 scheme)")
        out["not_carried"] = {n: why for n in {**onnx_summary["layers"], **onnx_summary["not_carried"]}}
        out["layers"] = {}
    out["enabled"] = config.carry_quantization
    return out


def _run(runner: Any, processor: Any, observations: list[dict], ref: dict, batch: int) -> dict[str, np.ndarray]:
    """Run `runner` (OnnxGraphs or TensorRTGraphs) on `observations` in batches of at most `batch`
    (the engine's profile maximum); tokens heads are also run teacher-forced on the torch tokens."""
    outs = []
    for i in range(0, len(observations), batch):
        bins = ref["bins"][i:i + batch] if "bins" in ref else None
        outs.append(runner_outputs(runner, processor(observations[i:i + batch]), ref, bins))
    return {k: np.concatenate([o[k] for o in outs], axis=0) for k in outs[0]}
