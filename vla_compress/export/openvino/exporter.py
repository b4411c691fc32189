"""The OpenVINO exporter: fp32 ONNX graphs -> OpenVINO IR -> (nncf) -> parity in OpenVINO's runtime.

The IR is converted from the ONNX artifact's graphs (a `base` fp32 ONNX artifact of this model, or
traced now with the ONNX exporter), never traced separately, so the I/O contract (names, symbolic
axes, recorded in artifact.json `io`) is the ONNX one and the runtime reuses its decode loop.
Steps of `export`:
  1. the fp32 ONNX graphs (base, or traced now; torch-quantized layers as their dequantized float
     weights: their scheme is re-quantized by nncf, not carried);
  2. int8: calibration feeds per graph (export/onnx/steps.py: decode inputs from the fp32 greedy loop);
  3. per graph: openvino.convert_model, the `where:` scope as nncf's ignored scope (quantize.py), the
     precision's nncf call, openvino.save_model (compress_to_fp16=False: fp32 stays fp32).
Artifact layout: artifact.json, <graph>.xml + <graph>.bin, the processor files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..artifact import Artifact
from ..base import ExportInputs, Exporter
from ..family import weights_fingerprint
from ..parity import ParityReport
from ..template import ExportJob, QuantizationCarryWarning
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .config import OpenVinoExportConfig

NOT_CARRIED = ("the OpenVINO export converts the dequantized float weight and re-quantizes it at the export "
               "precision (carrying torch's integers into the IR is not implemented)")


class OpenVinoExporter(Exporter):
    """OpenVINO IR from this model's fp32 ONNX graphs; see the module docstring.

    Inputs (ExportInputs): base (an fp32 ONNX artifact of this model; default: trace now), calibration
    (int8), example (to trace with), source, threads (calibration runs).
    """

    format = "openvino"
    label = "OpenVINO"
    config_cls = OpenVinoExportConfig

    def prepare(self, job: ExportJob) -> None:
        if job.config.precision == "int8" and not job.inputs.calibration:
            raise ConfigError("openvino int8 export needs calibration observations (pass calibration=[observation, ...])")
        job.manifest.update(scope=None)

    def write(self, job: ExportJob, stage: Path, tmp: Path) -> None:
        import openvino as ov

        from ..onnx.steps import calibration_feeds
        from .quantize import ignored_scope, op_summary, out_of_scope_nodes, quantize_ir, scoped_module_paths

        vla, config, inputs, manifest = job.vla, job.config, job.inputs, job.manifest
        onnx_art = self._onnx_graphs(vla, inputs.base, tmp, inputs.example or inputs.calibration, inputs.source,
                                     job.meta)
        manifest["onnx_base"] = {"path": str(onnx_art.path.resolve()) if inputs.base is not None else None,
                                 "precision": onnx_art.precision, "opset": onnx_art.manifest.get("opset")}
        onnx_files = {n: onnx_art.file(g["file"]) for n, g in onnx_art.manifest["graphs"].items()}
        feeds: dict[str, list[dict]] = {}
        if config.precision == "int8":
            graphs = {n: (f, 0) for n, f in onnx_files.items()}
            feeds = calibration_feeds(vla, job.family, tmp / "calibration", graphs,
                                      list(inputs.calibration)[: config.calibration_limit], inputs.threads)
        paths = scoped_module_paths(vla, config.where) if config.scoped and config.precision != "fp32" else None
        scope: dict[str, Any] = {"where": config.where.to_dict(), "graphs": {}}
        for name, src in onnx_files.items():
            model = ov.convert_model(str(src))
            ignored = None
            if paths is not None:
                out, total = out_of_scope_nodes(src, paths)
                ignored = ignored_scope(model, out)
                scope["graphs"][name] = {"weight_ops": total, "ignored": len(out),
                                         "ignored_ir_ops": len(ignored.names) if ignored is not None else 0}
            model = quantize_ir(model, config, feeds.get(name), ignored)
            xml = stage / f"{name}.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
            manifest["graphs"][name] = {"file": xml.name, "weights": xml.with_suffix(".bin").name,
                                        "ops": op_summary(model), "onnx_ops": onnx_art.manifest["graphs"][name].get("ops")}
            manifest["io"][name] = onnx_art.manifest["io"][name]
        if paths is not None:
            manifest["scope"] = scope
        carried = onnx_art.manifest.get("quantization_carry")
        if carried and (carried.get("layers") or carried.get("not_carried")):
            names = {**carried.get("layers", {}), **carried.get("not_carried", {})}
            manifest["quantization_carry"] = {"enabled": False, "layers": {}, "inexact": {},
                                              "not_carried": {n: NOT_CARRIED for n in names}}

    # --- stages ------------------------------------------------------------------------------
    def _onnx_graphs(self, vla: Any, base: Artifact | str | Path | None, tmp: Path, example: Any,
                     source: str | Path | None, meta: dict) -> Artifact:
        """The fp32 ONNX artifact the IR is converted from: `base` (checked to be this model's) or
        traced now, torch-quantized layers as their dequantized weights."""
        from ..onnx import OnnxExportConfig
        from ..onnx.exporter import OnnxExporter

        if base is None:
            with warnings.catch_warnings():  # what is not carried is reported by this exporter
                warnings.simplefilter("ignore", QuantizationCarryWarning)
                return OnnxExporter().export(vla, OnnxExportConfig(carry_quantization=False), tmp / "onnx-fp32",
                                             ExportInputs(example=example, source=source))
        base = base if isinstance(base, Artifact) else Artifact.load(base)
        if base.format != "onnx" or base.precision != "fp32":
            raise ConfigError(f"{base.path}: base must be an fp32 ONNX artifact, is {base.format} {base.precision}")
        base.require_usable()
        if base.manifest.get("model") != meta or base.manifest["source"].get("weights_sha256") != weights_fingerprint(vla):
            raise ConfigError(f"{base.path}: base artifact was exported from different weights than this model")
        if any(g.get("carried_nodes") for g in base.manifest["graphs"].values()):
            raise ConfigError(f"{base.path}: this ONNX base carries torch-quantized layers (int8/int4 nodes); the "
                              "OpenVINO export converts fp32 graphs: give a base exported with carry_quantization: false, "
                              "or no base")
        return base

    # --- validation ----------------------------------------------------------------------------
    def validate(self, artifact: Artifact, vla: Any, observations: list[dict], threads: int = 1) -> ParityReport:
        """Run the IR in OpenVINO's CPU runtime (f32 inference precision, through the artifact's own
        processor files) and torch on the same observations, as one batch; record ok/failed."""
        import time

        from ...runtime.openvino_policy import OpenVinoGraphs

        family = source_family(artifact, vla, observations)
        config = OpenVinoExportConfig.from_dict(artifact.manifest["config"])
        ref, torch_s = torch_reference(family, vla, observations)
        t1 = time.perf_counter()

        def run() -> dict:
            runner = OpenVinoGraphs(artifact, threads=threads, device="CPU", inference_precision="f32")
            return runner_outputs(runner, family.load_processor(artifact.path)(observations), ref)

        got = run_or_fail(artifact, "OpenVINO", run)
        return record(artifact, ref, got, config.tolerance_for, {"torch": torch_s, "openvino": time.perf_counter() - t1})
