"""Graph optimisation for ONNX Runtime: fuse an fp32 graph's normalisations, activations and attention
cores into ONNX Runtime's contrib kernels before it is quantized (OnnxExportConfig.optimize "ort").

The fusions are onnxscript's ORT rewrite rules, applied selectively:
  kept      RMSNorm -> SimplifiedLayerNormalization, erf/tanh GELU -> Gelu/FastGelu (+ BiasGelu),
            rotary embedding -> RotaryEmbedding, scaled-dot-product attention -> MultiHeadAttention
            (Q/K/V stay separate MatMuls), and ORT's FusedMatMul/Softmax pattern rules;
  left out  Q/K/V packing into one Attention node (its projection weights are then no MatMul the
            quantizer sees: they stay fp32) and SkipLayerNormalization / SkipSimplifiedLayerNormalization
            (the int8-dynamic graph of reference-small-chunk ran 0.4 ms slower with them on this CPU:
            the bias add they absorb no longer fuses into the quantized MatMul).
ONNX Runtime does its own fusions at load (graph_optimization_level ALL) but does not recognise the
RMSNorm and GELU forms torch.onnx's dynamo exporter writes; these rules do. Every fused graph is
validated against torch like any other export (parity in the manifest).
"""

from __future__ import annotations

from pathlib import Path


def optimize_for_onnxruntime(src: Path, dst: Path, external: bool) -> dict[str, int]:
    """Write `src` fused for ONNX Runtime to `dst` (weights in `<dst>.data` when `external`); returns
    the number of each fusion applied (recorded in the manifest)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.cos_sin_cache import fuse_cos_sin_cache
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha

    model = ir.load(str(src))
    # shapes and constants first: the fusion patterns match on folded shape arithmetic
    common.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    counts = {"erf_gelu": fuse_erfgelu(model), "rms_normalization": fuse_rms_normalization(model),
              "rotary_embedding": fuse_rotary_embedding(model), "cos_sin_cache": fuse_cos_sin_cache(model)}
    common.CommonSubexpressionEliminationPass()(model)
    counts["sdpa"] = fuse_sdpa(model, apply_shape_inference=True)
    counts["multi_head_attention"] = fuse_mha1(model) + fuse_mha2(model)
    counts["sdpa_via_mha"] = replace_sdpa_by_mha(model)
    counts["gelu"] = fuse_gelu(model)
    counts["bias_gelu"] = fuse_bias_gelu(model)
    optimize(model)  # inline what a fusion left as a function, drop unused nodes
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    ir.passes.Sequential(common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1),
                         common.RemoveInitializersFromInputsPass(), common.ShapeInferencePass())(model)
    dst = Path(dst)
    if external:
        ir.save(model, str(dst), external_data=dst.name + ".data")
    else:
        ir.save(model, str(dst))
    return {k: int(v) for k, v in counts.items() if v}
