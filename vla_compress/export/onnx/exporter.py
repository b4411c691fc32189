"""The ONNX exporter: trace -> check -> quantize -> manifest; validation in ONNX Runtime.

Tracing uses `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). On these
versions the legacy TorchScript exporter fails on transformers 5.x's mask creation unless a
mask is forced through, while the dynamo path handles the Llama/SigLIP blocks, the
DynamicCache and symbolic batch/text/past axes as they are.

Artifact layout (one directory):
    artifact.json                    the manifest (see export/artifact.py)
    policy_step.onnx                 regression head; or prefill.onnx + decode.onnx (tokens head)
    *.onnx.data                      weights, only when the model is large (external data)
    config.json tokenizer.json dataset_statistics.json   the processor pieces
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..artifact import Artifact, hash_files, new_manifest, sha256_file, staged_dir
from ..base import ExportError, Exporter
from ..family import get_export_family, weights_fingerprint
from ..parity import ParityReport
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .carry import carried_summary, carried_tolerance
from .config import DEFAULT_TOLERANCES, OnnxExportConfig
from .graphs import build_graphs
from .quantize import op_summary, quantize, save_model


class OnnxExporter(Exporter):
    format = "onnx"
    config_cls = OnnxExportConfig

    def export(self, vla: Any, config: OnnxExportConfig, out_dir: str | Path, *, calibration: list[dict] | None = None,
               example: list[dict] | None = None, source: str | Path | None = None,
               base: Artifact | str | Path | None = None, threads: int = 1) -> Artifact:
        """Export `vla` to an ONNX artifact in `out_dir` (status "unvalidated"; call validate()).

        calibration: observations for int8-static (others ignore them).
        example: observations to trace with (>= 2; default: the calibration ones, else synthetic).
        source: the checkpoint `vla` was loaded from, recorded with its file hashes.
        base: an fp32 ONNX artifact of this same model to quantize instead of tracing again
              (a recipe exporting several precisions traces once).
        """
        if not isinstance(config, OnnxExportConfig):
            raise ConfigError(f"the onnx exporter needs an OnnxExportConfig, got {type(config).__name__}")
        family = get_export_family(getattr(vla, "family", ""))
        meta = family.head_meta(vla)
        config.check_head(meta["head"])
        if config.precision == "int8-static" and not calibration:
            raise ConfigError("int8-static export needs calibration observations (pass calibration=[observation, ...])")
        out_dir = Path(out_dir)
        manifest = new_manifest("onnx", config.precision, config.to_dict(), source_info(vla, source),
                                opset=config.opset, model=meta, graphs={}, io={})
        try:
            with staged_dir(out_dir) as stage, tempfile.TemporaryDirectory(dir=stage.parent) as tmp:
                work = Path(tmp)
                carry: dict[str, dict] = {}
                if base is not None:  # quantize the base artifact's fp32 graphs in place (read only)
                    graphs = self._from_base(base, meta, manifest["source"]["weights_sha256"], carry)
                else:
                    examples = example or calibration or family.example_observations(vla, 2)
                    graphs = self._trace(vla, config, work, examples, carry)
                feeds = {}
                if config.precision == "int8-static":
                    feeds = self._calibration_feeds(vla, family, work, graphs,
                                                    calibration[: config.calibration_limit], threads)
                for name, (src, wbytes) in graphs.items():
                    external = config.use_external_data(wbytes)
                    kept = carry.get(name, {}).get("nodes", [])  # carried from torch: not quantized again
                    quantize(config.precision, src, stage / src.name, config, external, feeds.get(name), kept)
                    _check(stage / src.name)
                    manifest["graphs"][name] = {"file": src.name, "external_data": external,
                                                "weight_bytes_fp32": wbytes, "ops": op_summary(stage / src.name),
                                                "carried_nodes": kept}
                    manifest["io"][name] = io_signature(stage / src.name)
                if carry:
                    manifest["quantization_carry"] = carried_summary(carry) | {"enabled": config.carry_quantization}
                manifest["processor_files"] = family.save_processor(vla, stage)
                manifest["files"] = hash_files(stage)
                Artifact(stage, manifest).save()  # manifest last: a directory with artifact.json is complete
        except (ExportError, ConfigError):
            raise
        except Exception as e:
            _record_failure(out_dir, manifest, e)
            raise ExportError(out_dir, f"ONNX export ({config.precision}) failed: {type(e).__name__}: {e}") from e
        return finished(out_dir, manifest)

    # --- stages ------------------------------------------------------------------------------
    def _trace(self, vla: Any, config: OnnxExportConfig, out: Path, example: list[dict],
               carry: dict[str, dict]) -> dict[str, tuple[Path, int]]:
        """fp32 graphs traced into `out`: {graph name: (path, fp32 weight bytes)}. Torch-quantized
        Linears are traced as their dequantized float weights, then (config.carry_quantization)
        rewritten into their scheme's ONNX form; `carry` receives each graph's carry report."""
        import onnx
        import torch

        from .carry import carry_quantization, float_stand_ins

        if len(example) < 2:
            example = list(example) * 2  # batch 1 would be specialised away
        specs = build_graphs(vla, vla.preprocess(list(example)))
        graphs = {}
        for spec in specs:
            file = f"{spec.name}.onnx"
            with warnings.catch_warnings(), torch.no_grad(), float_stand_ins(spec.module, vla) as quantized:
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    spec.module, spec.args, None, dynamo=True, opset_version=config.opset,
                    input_names=spec.input_names, output_names=spec.output_names,
                    dynamic_shapes=_shapes_by_arg(spec), verbose=False, optimize=True,
                )
            external = config.use_external_data(spec.weight_bytes)
            program.save(str(out / file), external_data=external)
            if quantized and config.carry_quantization:
                model = onnx.load(str(out / file))
                carry[spec.name] = carry_quantization(model, quantized)
                with contextlib.chdir(out):
                    save_model(model, out / file, external)
            elif quantized:  # asked not to carry: the dequantized weights are what the precision re-quantizes
                carry[spec.name] = {"layers": {}, "nodes": [], "not_carried": {
                    n: "carry_quantization is off: traced as its dequantized float weight" for n in quantized}}
            onnx.checker.check_model(str(out / file))
            graphs[spec.name] = (out / file, spec.weight_bytes)
        return graphs

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

    def _calibration_feeds(self, vla: Any, family: Any, work: Path, graphs: dict, observations: list[dict],
                           threads: int) -> dict[str, list[dict]]:
        """Per-graph input feeds for static calibration; decode inputs come from running the fp32
        graphs' own greedy loop on the observations (the KV caches they will really see)."""
        from ...runtime.onnxruntime_policy import OnnxGraphs

        family.save_processor(vla, work)
        processor = family.load_processor(work)
        meta = family.head_meta(vla)
        (src_dir,) = {src.parent for src, _ in graphs.values()}
        fp32 = Artifact(src_dir, {"model": meta, "graphs": {n: {"file": src.name} for n, (src, _) in graphs.items()}})
        runner = OnnxGraphs(fp32, threads=threads, providers=["CPUExecutionProvider"])
        first = "policy_step" if meta["head"] == "regression" else "prefill"
        feeds: dict[str, list[dict]] = {first: [], "decode": []}
        runner.decode_feeds = feeds["decode"]
        for obs in observations:
            f = processor([obs])
            feeds[first].append({i.name: f[i.name] for i in runner.sessions[first].get_inputs()})
            if meta["head"] == "tokens":
                runner.predict(f)
        return feeds

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
def _shapes_by_arg(spec) -> dict:
    """dynamic_shapes keyed by the wrapper's forward() parameter names, in order."""
    import inspect

    params = list(inspect.signature(spec.module.forward).parameters)
    names = list(spec.dynamic_shapes)
    if len(params) != len(names):
        raise ExportError(spec.name, f"dynamic_shapes names {names} do not match forward{tuple(params)}")
    return {p: spec.dynamic_shapes[n] for p, n in zip(params, names)}


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


def finished(out_dir: Path, manifest: dict) -> Artifact:
    """The complete artifact at `out_dir`, after a warning naming the torch-quantized layers that did
    not keep their scheme exactly (given only once the artifact is written: a warning never fails it)."""
    if manifest.get("quantization_carry"):
        warn_not_carried(out_dir, manifest["quantization_carry"], stacklevel=5)
    return Artifact.load(out_dir)


def warn_not_carried(out_dir: Path, summary: dict, stacklevel: int = 3) -> None:
    """Say clearly which torch-quantized layers did not keep their scheme exactly."""
    problems = {**summary.get("not_carried", {}), **summary.get("inexact", {})}
    if problems:
        by_reason: dict[str, list[str]] = {}
        for name, why in sorted(problems.items()):
            by_reason.setdefault(why, []).append(name)
        lines = "; ".join(f"{len(names)} layer(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {why}"
                          for why, names in by_reason.items())
        warnings.warn(f"{out_dir}: {len(problems)} torch-quantized layer(s) not carried exactly into the export "
                      f"(artifact.json: quantization_carry): {lines}", QuantizationCarryWarning, stacklevel=stacklevel)


class QuantizationCarryWarning(UserWarning):
    """A torch-quantized layer's scheme could not be carried exactly into an export."""


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ExportError(path, f"onnx.checker rejected the model: {e}") from None


def io_signature(path: Path) -> dict:
    """Input/output names, element types and shapes (symbolic axes by name) of a graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": [d.dim_param or d.dim_value for d in t.shape.dim]})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def source_info(vla: Any, source: str | Path | None) -> dict:
    info = {"family": getattr(vla, "family", ""), "head": getattr(getattr(vla, "cfg", None), "head", None),
            "preset": getattr(getattr(vla, "cfg", None), "preset", None), "weights_sha256": weights_fingerprint(vla),
            "checkpoint": None, "checkpoint_files": {}}
    if source is not None:
        src = Path(source)
        info["checkpoint"] = str(src.resolve())
        if src.is_dir():
            info["checkpoint_files"] = {p.name: sha256_file(p) for p in sorted(src.iterdir())
                                        if p.is_file() and p.suffix in (".json", ".safetensors")}
    return info


def _record_failure(out_dir: Path, manifest: dict, error: Exception) -> None:
    """Leave a visible failed artifact (manifest only) where the export was asked to go."""
    from ..artifact import MANIFEST, replace_dir

    try:
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            return  # not ours to write into
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".failed", dir=out_dir.parent))
        manifest.update(status="failed", error=f"{type(error).__name__}: {error}", files={})
        Artifact(stage, manifest).save()
        replace_dir(stage, out_dir)  # a previous artifact here is replaced, not left looking current
    except OSError:
        pass
