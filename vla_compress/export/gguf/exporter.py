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

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..artifact import Artifact, hash_files, new_manifest, staged_dir
from ..base import ExportError, Exporter
from ..family import get_export_family
from ..onnx.exporter import _check, _record_failure, _shapes_by_arg, io_signature, source_info
from ..parity import ParityReport
from ..validation import record, run_or_fail, runner_outputs, source_family, torch_reference
from .config import GgufExportConfig
from .graphs import get_gguf_family
from .quantize import quantize_gguf, tensor_types
from .writer import llama_hparams, write_llama_gguf

GGUF_FILE = "backbone.gguf"
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")


class GgufExporter(Exporter):
    format = "gguf"
    config_cls = GgufExportConfig

    def export(self, vla: Any, config: GgufExportConfig, out_dir: str | Path, *, example: list[dict] | None = None,
               source: str | Path | None = None, calibration: list[dict] | None = None, **_: Any) -> Artifact:
        """Export `vla` to a GGUF + ONNX artifact in `out_dir` (status "unvalidated"; call validate()).

        example: observations to trace the ONNX side graphs with (default: synthetic ones).
        source: the checkpoint `vla` was loaded from, recorded with its file hashes.
        calibration: accepted for recipe symmetry and unused (llama.cpp's quantizers are data-free here).
        """
        if not isinstance(config, GgufExportConfig):
            raise ConfigError(f"the gguf exporter needs a GgufExportConfig, got {type(config).__name__}")
        family = get_export_family(getattr(vla, "family", ""))
        parts = get_gguf_family(vla.family)
        meta = family.head_meta(vla)
        backbone, lm_head = parts.backbone(vla)
        llama_hparams(backbone)  # unsupported backbones and tokenizers fail before any tracing
        vocab = parts.vocab(vla)
        out_dir = Path(out_dir)
        manifest = new_manifest("gguf", config.precision, config.to_dict(), source_info(vla, source),
                                opset=config.opset, model=meta, graphs={}, io={})
        manifest["versions"].update(_llama_versions())
        try:
            with staged_dir(out_dir) as stage, tempfile.TemporaryDirectory(dir=stage.parent) as tmp:
                examples = example or family.example_observations(vla, 2)
                for spec in parts.side_graphs(vla, vla.preprocess(list(examples) * (2 if len(examples) < 2 else 1))):
                    file = stage / f"{spec.name}.onnx"
                    _trace(spec, file, config.opset)
                    manifest["graphs"][spec.name] = {"file": file.name, "weight_bytes_fp32": spec.weight_bytes}
                    manifest["io"][spec.name] = io_signature(file)
                manifest["gguf"] = self._write_gguf(backbone, lm_head, vocab, config, stage / GGUF_FILE, Path(tmp),
                                                    name=f"{vla.family}-{getattr(vla.cfg, 'preset', 'custom')}")
                hp = manifest["gguf"]["hparams"]
                manifest["llama_cpp"] = {
                    "n_ctx": hp["context"], "kv_cache": config.kv_cache_type, "flash_attn": config.flash_attn_mode,
                    "hidden": hp["hidden"],
                    # regression: final hidden states at the query positions (embeddings mode);
                    # tokens: logits of the last vocabulary ids (the action bins)
                    "output": "hidden_states" if meta["head"] == "regression" else "logits",
                    "attention": "causal",  # as the torch backbone (LlamaModel) attends, queries included
                }
                manifest["processor_files"] = family.save_processor(vla, stage)
                manifest["files"] = hash_files(stage)
                Artifact(stage, manifest).save()
        except (ExportError, ConfigError):
            raise
        except Exception as e:
            _record_failure(out_dir, manifest, e)
            raise ExportError(out_dir, f"GGUF export ({config.precision}) failed: {type(e).__name__}: {e}") from e
        return Artifact.load(out_dir)

    def _write_gguf(self, backbone: Any, lm_head: Any, vocab: Any, config: GgufExportConfig, dst: Path, tmp: Path,
                    name: str) -> dict:
        """The backbone GGUF at `dst`: written directly (f32/f16) or quantized by llama.cpp from f32."""
        direct = config.precision in ("f32", "f16")
        src = dst if direct else tmp / "backbone-f32.gguf"
        t0 = time.perf_counter()
        info = write_llama_gguf(src, backbone, lm_head, vocab, config.precision if direct else "f32", name=name)
        t1 = time.perf_counter()
        if not direct:
            quantize_gguf(src, dst, config.precision, config.quantize_threads)
        types = tensor_types(dst)
        fallback = {}
        if config.precision == "q4_k_m":  # 2-D tensors llama.cpp could not K-quantize (rows not multiples of 256)
            fallback = {n: t for n, t in types["by_tensor"].items()
                        if t not in K_TYPES and t not in ("F32",) and not n.endswith("norm.weight")}
        return {"file": GGUF_FILE, **info, "tensor_types": types["counts"], "by_tensor": types["by_tensor"],
                "k_quant_fallback": fallback, "write_s": round(t1 - t0, 3),
                "quantize_s": None if direct else round(time.perf_counter() - t1, 3)}

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
        return record(artifact, ref, got, config.tolerance_for,
                      {"torch": torch_s, "llama.cpp+onnxruntime": time.perf_counter() - t1})


def _trace(spec: Any, file: Path, opset: int) -> None:
    """One fp32 side graph traced with torch.onnx's dynamo exporter, as the ONNX exporter traces."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(spec.module, spec.args, None, dynamo=True, opset_version=opset,
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    dynamic_shapes=_shapes_by_arg(spec), verbose=False, optimize=True)
    program.save(str(file))
    _check(file)


def _llama_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gguf", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
