"""The ONNX exporter: trace -> check -> quantize -> manifest; validation in ONNX Runtime.

Tracing uses `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). On these
versions the legacy TorchScript exporter fails on transformers 5.x's mask creation unless a
mask is forced through, while the dynamo path handles the Llama/SigLIP blocks, the
DynamicCache and symbolic batch/text/past axes as they are.

Artifact layout (one directory):
    artifact.json                    the manifest (see export/artifact.py)
    policy_step.onnx                 regression head; or prefill.onnx + decode.onnx (tokens head),
                                     or prefix.onnx + denoise_step.onnx (flow head: the Euler loop,
                                     artifact.json model.loop, runs in the runtime)
    *.onnx.data                      weights, only when the model is large (external data)
    config.json tokenizer.json dataset_statistics.json   the processor pieces
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..artifact import Artifact
from ..base import Exporter
from ..parity import ParityReport
from ..template import ExportJob, QuantizationCarryWarning  # noqa: F401  (QuantizationCarryWarning: re-exported)
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .carry import carried_summary, carried_tolerance
from .config import DEFAULT_TOLERANCES, OnnxExportConfig
from .graphs import build_graphs
from .quantize import op_summary, quantize
from .steps import calibration_feeds, check_graph_file, io_signature, trace_graph


class OnnxExporter(Exporter):
    """ONNX graphs traced from torch (or an fp32 `base` artifact's), then quantized to the precision.

    Inputs (ExportInputs): calibration (int8-static), example (to trace with), source, base (an
    fp32 ONNX artifact of this same model to quantize instead of tracing again: a recipe exporting
    several precisions traces once), threads (the calibration runs).
    """

    format = "onnx"
    label = "ONNX"
    config_cls = OnnxExportConfig

    def prepare(self, job: ExportJob) -> None:
        if job.config.precision == "int8-static" and not job.inputs.calibration:
            raise ConfigError("int8-static export needs calibration observations (pass calibration=[observation, ...])")
        job.manifest["opset"] = job.config.opset
        from ...runtime.onnxruntime_policy import SESSION

        job.manifest["session"] = dict(SESSION)  # how the project's runtime runs the graphs

    def write(self, job: ExportJob, stage: Path, tmp: Path) -> None:
        vla, config, inputs, manifest = job.vla, job.config, job.inputs, job.manifest
        carry: dict[str, dict] = {}
        if inputs.base is not None:  # quantize the base artifact's fp32 graphs in place (read only)
            graphs = self._from_base(inputs.base, job.meta, manifest["source"]["weights_sha256"], carry)
        else:
            examples = inputs.example or inputs.calibration or job.family.example_observations(vla, 2)
            graphs = self._trace(vla, config, tmp, list(examples), carry)
        feeds = {}
        if config.precision == "int8-static":
            observations = list(inputs.calibration)[: config.calibration_limit]
            feeds = calibration_feeds(vla, job.family, tmp, graphs, observations, inputs.threads)
        for name, (src, wbytes) in graphs.items():
            external = config.use_external_data(wbytes)
            kept = carry.get(name, {}).get("nodes", [])  # carried from torch: not quantized again
            fused = None
            if config.optimize == "ort":
                src, fused = self._optimize(src, tmp / "ort", external, kept)
            quantize(config.precision, src, stage / src.name, config, external, feeds.get(name), kept)
            check_graph_file(stage / src.name, onnxruntime_ops=fused is not None)
            manifest["graphs"][name] = {"file": src.name, "external_data": external,
                                        "weight_bytes_fp32": wbytes, "ops": op_summary(stage / src.name),
                                        "carried_nodes": kept}
            if fused is not None:
                manifest["graphs"][name]["optimized"] = {"for": "onnxruntime", "fusions": fused}
            manifest["io"][name] = io_signature(stage / src.name)
        if carry:
            manifest["quantization_carry"] = carried_summary(carry) | {"enabled": config.carry_quantization}

    # --- stages ------------------------------------------------------------------------------
    def _trace(self, vla: Any, config: OnnxExportConfig, out: Path, example: list[dict],
               carry: dict[str, dict]) -> dict[str, tuple[Path, int]]:
        """fp32 graphs traced into `out`: {graph name: (path, fp32 weight bytes)}. Torch-quantized
        Linears are traced as their dequantized float weights, then (config.carry_quantization)
        rewritten into their scheme's ONNX form; `carry` receives each graph's carry report."""
        import onnx

        if len(example) < 2:
            example = list(example) * 2  # batch 1 would be specialised away
        graphs = {}
        for spec in build_graphs(vla, vla.preprocess(list(example))):
            file = out / f"{spec.name}.onnx"
            report = trace_graph(spec, file, config.opset, vla, config.carry_quantization,
                                 config.use_external_data(spec.weight_bytes))
            if report is not None:
                carry[spec.name] = report
            onnx.checker.check_model(str(file))
            graphs[spec.name] = (file, spec.weight_bytes)
        return graphs

    def _optimize(self, src: Path, out: Path, external: bool, kept: list[str]) -> tuple[Path, dict[str, int]]:
        """`src` fused for ONNX Runtime into `out` (same file name); a carried node the fusions
        removed is an ExportError (the carry would be lost)."""
        import onnx

        from ..base import ExportError
        from .optimize import optimize_for_onnxruntime

        out.mkdir(parents=True, exist_ok=True)
        dst = out / src.name
        fusions = optimize_for_onnxruntime(src, dst, external)
        if kept:
            names = {n.name for n in onnx.load(str(dst), load_external_data=False).graph.node}
            lost = sorted(set(kept) - names)
            if lost:
                raise ExportError(src, f"optimize 'ort' removed carried quantized nodes {lost[:4]}: export with "
                                       "optimize: none to keep the torch quantization")
        return dst, fusions

    def _from_base(self, base: Artifact | str | Path, meta: dict, fingerprint: str,
                   carry: dict[str, dict]) -> dict[str, tuple[Path, int]]:
        base = base if isinstance(base, Artifact) else Artifact.load(base)
        if base.format != "onnx" or base.precision != "fp32":
            raise ConfigError(f"{base.path}: base must be an fp32 ONNX artifact, is {base.format} {base.precision}")
        base.require_usable()
        if base.manifest.get("model") != meta or base.manifest["source"].get("weights_sha256") != fingerprint:
            raise ConfigError(f"{base.path}: base artifact was exported from different weights than this model")
        carry.update(base_carry(base.manifest))
        return {name: (base.file(g["file"]), g["weight_bytes_fp32"]) for name, g in base.manifest["graphs"].items()}

    # --- validation ----------------------------------------------------------------------------
    def validate(self, artifact: Artifact, vla: Any, observations: list[dict], threads: int = 1,
                 providers: list[str] | None = None) -> ParityReport:
        """Run the artifact in ONNX Runtime (through its own processor files) and torch on the same
        observations, as one batch; record the report and ok/failed in the manifest.
        providers: ORT execution providers (default CPU, where the thresholds were set)."""
        import time

        from ...runtime.onnxruntime_policy import OnnxGraphs

        family = source_family(artifact, vla, observations)
        config = OnnxExportConfig.from_dict(artifact.manifest["config"])
        ref, torch_s = torch_reference(family, vla, observations)
        t1 = time.perf_counter()

        def run() -> dict:
            runner = OnnxGraphs(artifact, threads=threads, providers=providers or ["CPUExecutionProvider"])
            return runner_outputs(runner, family.load_processor(artifact.path)(observations), ref)

        got = run_or_fail(artifact, "ONNX Runtime", run)
        carried = artifact.manifest.get("quantization_carry")
        tolerance_for = config.tolerance_for if config.tolerance is not None or not carried else (
            lambda head: carried_tolerance(config.precision, carried, DEFAULT_TOLERANCES))
        return record(artifact, ref, got, tolerance_for,
                      {"torch": torch_s, "onnxruntime": time.perf_counter() - t1})


# --- helpers ---------------------------------------------------------------------------------
def base_carry(manifest: dict) -> dict[str, dict]:
    """Per-graph carry reports rebuilt from an fp32 base artifact's manifest (its carried nodes
    stay as they are when the base is quantized to another precision)."""
    summary = manifest.get("quantization_carry")
    if not summary:
        return {}
    out = {}
    for name, g in manifest["graphs"].items():
        layers = {n: e for n, e in summary["layers"].items() if name in e.get("graphs", [])}
        out[name] = {"layers": layers, "nodes": list(g.get("carried_nodes", [])), "not_carried": summary["not_carried"]}
    return out

