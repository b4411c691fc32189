"""The GGUF exporter: Llama backbone -> GGUF (llama.cpp), the rest -> ONNX; validation in llama.cpp.

Artifact layout (one directory):
    artifact.json        the manifest (export/artifact.py), with `gguf` (file, tensor types, fallbacks)
                         and `llama_cpp` (context length, KV-cache type, how the runtime drives it)
    backbone.gguf        the Llama as a llama-architecture GGUF at the chosen precision
    embed.onnx           vision encoder + projector + proprio projector + text/BOS embeddings
                         (+ action queries): the whole input sequence as embeddings
    action_head.onnx     regression head only: the L1 head on the backbone's final hidden states
    config.json tokenizer.json dataset_statistics.json   the processor pieces

Quantized precisions are made from an f32 GGUF by llama.cpp's own quantizer, so tensor choices
(K-quant mixes, fallbacks) are exactly what llama.cpp users get.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...nn.quantized_state import quantized_modules
from ..artifact import Artifact
from ..base import Exporter
from ..onnx.carry import carried_tolerance
from ..onnx.steps import check_graph_file, io_signature, trace_graph
from ..parity import ParityReport
from ..template import ExportJob
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .config import DEFAULT_TOLERANCES, FTYPES, GgufExportConfig
from .graphs import get_gguf_family, vocab_of
from .quantize import carry_plan, quantize_gguf, quantized_tensors, tensor_types
from .writer import llama_hparams, write_llama_gguf

GGUF_FILE = "backbone.gguf"
# the GGUF precision whose parity bounds fit a carried torch scheme (config.py explains them)
GGUF_SCHEME_PRECISION = {"int8_weight_only": "q8_0", "int8_dynamic": "q8_0", "int8_static": "q8_0",
                         "int4_weight_only": "q4_0"}
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")


class GgufExporter(Exporter):
    """The backbone as a GGUF for llama.cpp, the rest as ONNX side graphs.

    Inputs (ExportInputs): example (to trace the side graphs with; default: synthetic ones), source.
    calibration, base and threads are not used (llama.cpp's quantizers are data-free here).
    """

    format = "gguf"
    label = "GGUF"
    config_cls = GgufExportConfig

    def prepare(self, job: ExportJob) -> None:
        parts = get_gguf_family(job.vla.family)
        backbone, lm_head = parts.backbone(job.vla)
        llama_hparams(backbone)  # unsupported backbones and tokenizers fail before any tracing
        job.notes.update(parts=parts, backbone=backbone, lm_head=lm_head, vocab=vocab_of(job.vla))
        job.manifest["opset"] = job.config.opset
        job.manifest["versions"].update(_llama_versions())

    def write(self, job: ExportJob, stage: Path, tmp: Path) -> None:
        vla, config, manifest, n = job.vla, job.config, job.manifest, job.notes
        examples = job.inputs.example or job.family.example_observations(vla, 2)
        side: dict[str, dict] = {}
        for spec in n["parts"].side_graphs(vla, vla.preprocess(list(examples) * (2 if len(examples) < 2 else 1))):
            file = stage / f"{spec.name}.onnx"
            rep = trace_graph(spec, file, config.opset, vla, config.carry_quantization, external=None)
            check_graph_file(file)
            if rep is not None:
                side[spec.name] = rep
            manifest["graphs"][spec.name] = {"file": file.name, "weight_bytes_fp32": spec.weight_bytes,
                                             "carried_nodes": rep["nodes"] if rep else []}
            manifest["io"][spec.name] = io_signature(file)
        manifest["gguf"] = self._write_gguf(vla, n["backbone"], n["lm_head"], n["vocab"], config, stage / GGUF_FILE,
                                            tmp, name=vla.model_name)
        carry = gguf_carry_summary(side, manifest["gguf"])
        if carry is not None:
            manifest["quantization_carry"] = carry | {"enabled": config.carry_quantization}
        hp = manifest["gguf"]["hparams"]
        manifest["llama_cpp"] = {
            "n_ctx": hp["context"], "kv_cache": config.kv_cache_type, "flash_attn": config.flash_attn_mode,
            "hidden": hp["hidden"],
            # regression: final hidden states at the query positions (embeddings mode);
            # tokens: logits of the last vocabulary ids (the action bins)
            "output": "hidden_states" if job.meta["head"] == "regression" else "logits",
            # as the torch backbone attends: causal (LlamaModel, queries included), or
            # bidirectional where the family says so (OpenVLA-OFT's parallel decoding)
            "attention": job.meta.get("attention", "causal"),
        }

    def _write_gguf(self, vla: Any, backbone: Any, lm_head: Any, vocab: Any, config: GgufExportConfig, dst: Path,
                    tmp: Path, name: str) -> dict:
        """The backbone GGUF at `dst`: written directly (f32/f16) or quantized by llama.cpp from f32.
        Linears quantized in torch keep their scheme (quantize.carry_plan) whatever the precision."""
        import gguf

        hp = llama_hparams(backbone)
        plan, skipped = {}, {}
        if config.carry_quantization and quantized_modules(vla):
            names = {id(m): n for n, m in quantized_modules(vla).items()}
            plan, skipped = carry_plan(backbone, _output_module(vla, lm_head), names, hp.n_heads, hp.n_kv_heads)
        raw = {n: (t.data, getattr(gguf.GGMLQuantizationType, t.ggml_type)) for n, t in plan.items()}
        direct = config.precision in ("f32", "f16")
        src = dst if direct else tmp / "backbone-f32.gguf"
        t0 = time.perf_counter()
        info = write_llama_gguf(src, backbone, lm_head, vocab, config.precision if direct else "f32", name=name,
                                raw=raw if direct else None)
        t1 = time.perf_counter()
        if not direct:
            quantized = tmp / "backbone-quantized.gguf" if raw else dst
            quantize_gguf(src, quantized, config.precision, config.quantize_threads)
            if raw:  # llama.cpp's choice for the float tensors, torch's scheme for the quantized ones
                ftype = getattr(gguf.LlamaFileType, FTYPES[config.precision].removeprefix("LLAMA_FTYPE_"))
                write_llama_gguf(dst, backbone, lm_head, vocab, "f32", name=name,
                                 raw={**quantized_tensors(quantized), **raw}, ftype=ftype)
        types = tensor_types(dst)
        fallback = {}
        if config.precision == "q4_k_m":  # 2-D tensors llama.cpp could not K-quantize (rows not multiples of 256)
            fallback = {n: t for n, t in types["by_tensor"].items()
                        if t not in K_TYPES and t not in ("F32",) and not n.endswith("norm.weight") and n not in plan}
        return {"file": GGUF_FILE, **info, "tensor_types": types["counts"], "by_tensor": types["by_tensor"],
                "k_quant_fallback": fallback, "write_s": round(t1 - t0, 3),
                "quantize_s": None if direct else round(time.perf_counter() - t1, 3),
                "carried": {n: t.describe() for n, t in plan.items()}, "not_carried": skipped}

    # --- validation ----------------------------------------------------------------------------
    def validate(self, artifact: Artifact, vla: Any, observations: list[dict], threads: int = 1) -> ParityReport:
        """Run the artifact (ONNX Runtime + llama.cpp) and torch on the same observations; record the
        report and ok/failed in the manifest. llama.cpp runs one observation at a time (a robot's
        batch), ONNX Runtime the whole batch."""
        from ...runtime.llamacpp_engine import load_llama_cpp
        from ...runtime.llamacpp_policy import HybridRunner

        load_llama_cpp()  # a machine without llama.cpp cannot judge the artifact: an error, not a "failed" verdict
        if artifact.format != "gguf":
            raise ConfigError(f"{artifact.path}: not a GGUF artifact (format {artifact.format!r})")
        family = source_family(artifact, vla, observations)
        config = GgufExportConfig.from_dict(artifact.manifest["config"])
        ref, torch_s = torch_reference(family, vla, observations)
        t1 = time.perf_counter()

        def run() -> dict:
            runner = HybridRunner(artifact, threads=threads)
            try:
                return runner_outputs(runner, family.load_processor(artifact.path)(observations), ref)
            finally:
                runner.close()

        got = run_or_fail(artifact, "llama.cpp", run)
        carried = artifact.manifest.get("quantization_carry")
        tolerance_for = config.tolerance_for if config.tolerance is not None or not carried else (
            lambda head: carried_tolerance(config.precision, carried, DEFAULT_TOLERANCES, GGUF_SCHEME_PRECISION))
        return record(artifact, ref, got, tolerance_for,
                      {"torch": torch_s, "llama.cpp+onnxruntime": time.perf_counter() - t1})


def _output_module(vla: Any, lm_head: Any) -> Any:
    """The torch-quantized module whose (dequantized) weight is the LM head the family handed over."""
    if lm_head is None:
        return None
    for m in quantized_modules(vla).values():
        if (m.out_features, m.in_features) == tuple(lm_head.shape) and bool((m.dequantize() == lm_head).all()):
            return m
    return None


def gguf_carry_summary(side: dict[str, dict], gguf_info: dict) -> dict | None:
    """The manifest's `quantization_carry` of a GGUF artifact: layers carried into the ONNX side
    graphs and into GGUF tensors, and those not carried (or not exactly)."""
    from ..onnx.carry import carried_summary

    if not side and not gguf_info.get("carried") and not gguf_info.get("not_carried"):
        return None
    out = carried_summary(side) if side else {"layers": {}, "not_carried": {}, "inexact": {}}
    for tensor, t in gguf_info.get("carried", {}).items():
        out["layers"][t["module"]] = {"scheme": t["scheme"], "gguf_tensor": tensor, "ggml_type": t["ggml_type"],
                                      "exact": t["exact"], "note": t["note"]}
        if not t["exact"]:
            out["inexact"][t["module"]] = t["note"]
    out["not_carried"] = {n: w for n, w in {**out["not_carried"], **gguf_info.get("not_carried", {})}.items()
                          if n not in out["layers"] and n.partition("[")[0] not in out["layers"]}
    return out


def _llama_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gguf", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
