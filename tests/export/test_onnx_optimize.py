"""ONNX graphs fused for ONNX Runtime (optimize "ort"), the Conv left in fp32 by default, and the
int8-static form ORT's CPU provider fuses (per-tensor weights, uint8 activations)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.export import ExportError, Tolerance, export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.export.onnx.steps import check_graph_file


def _ops(art, graph: str) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(art.file(art.manifest["graphs"][graph]["file"]))).graph.node)


@pytest.mark.parametrize("head", ["regression", "tokens"])
@pytest.mark.parametrize("precision", ["fp32", "int8-dynamic"])
def test_ort_optimized_graph_is_fused_recorded_and_keeps_parity(onnx_fp32, tiny_models, observations, tmp_path,
                                                                 head, precision):
    vla = tiny_models[head]
    tol = None if head == "regression" or precision == "fp32" else Tolerance(min_cosine=0.98)
    art = export(vla, OnnxExportConfig(precision=precision, optimize="ort", tolerance=tol), tmp_path / "o",
                 base=onnx_fp32[head])
    for name, g in art.manifest["graphs"].items():
        assert g["optimized"]["for"] == "onnxruntime"
        fusions = g["optimized"]["fusions"]
        assert fusions["rms_normalization"] > 0  # the backbone's RMSNorms
        ops = _ops(art, name)
        assert ops["SimplifiedLayerNormalization"] + ops["SkipSimplifiedLayerNormalization"] > 0
        plain = _ops(onnx_fp32[head], name)
        assert ops["Pow"] < plain["Pow"]  # the decomposed norms are gone
        assert "Attention" not in ops  # Q/K/V stay separate MatMuls (quantizable)
    report = validate(art, vla, observations)
    assert report.passed, report.summary()
    if precision == "fp32":
        assert report.max_abs < 1e-4 and report.action_l1_mean < 1e-4


def test_ort_optimized_runtime_matches_plain_graph(onnx_fp32, tiny_models, observations, tmp_path):
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    vla = tiny_models["regression"]
    art = export(vla, OnnxExportConfig(optimize="ort"), tmp_path / "o", base=onnx_fp32["regression"])
    validate(art, vla, observations)
    fused, plain = OnnxRuntimePolicy(art.path), OnnxRuntimePolicy(onnx_fp32["regression"].path)
    for o in observations[:3]:
        np.testing.assert_allclose(fused.infer(o), plain.infer(o), atol=1e-5)


def test_conv_stays_fp32_unless_asked(onnx_fp32, tiny_models, tmp_path):
    vla = tiny_models["regression"]
    default = export(vla, OnnxExportConfig(precision="int8-dynamic"), tmp_path / "d", base=onnx_fp32["regression"])
    ops = default.manifest["graphs"]["policy_step"]["ops"]
    assert ops.get("Conv") == 1 and "ConvInteger" not in ops and ops["MatMulInteger"] > 0
    conv = export(vla, OnnxExportConfig(precision="int8-dynamic", quantize_conv=True), tmp_path / "c",
                  base=onnx_fp32["regression"])
    ops = conv.manifest["graphs"]["policy_step"]["ops"]
    assert ops.get("ConvInteger") == 1 and "Conv" not in ops


def test_static_uint8_per_tensor_is_the_fused_cpu_form(onnx_fp32, tiny_models, observations, tmp_path):
    import onnx
    from onnx import numpy_helper

    vla = tiny_models["regression"]
    cfg = OnnxExportConfig(precision="int8-static", per_channel=False, activation_type="uint8")
    art = export(vla, cfg, tmp_path / "s", base=onnx_fp32["regression"], calibration=observations[:4])
    model = onnx.load(str(art.file("policy_step.onnx")))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[n.input[2]].dtype == np.uint8 for n in qs if len(n.input) > 2 and n.input[2] in inits)
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert scales and all(s.size == 1 for s in scales)  # per-tensor: QLinearMatMul-fusable on ORT's CPU EP
    assert validate(art, vla, observations).passed


def test_bad_optimize_and_activation_type_are_clear_errors():
    with pytest.raises(ConfigError, match="optimize must be one of none, ort, got 'fast'"):
        OnnxExportConfig(optimize="fast")
    with pytest.raises(ConfigError, match="activation_type must be 'int8' or 'uint8'"):
        OnnxExportConfig(precision="int8-static", activation_type="int4")


def test_contrib_op_graph_is_checked_by_onnxruntime(tmp_path):
    bad = tmp_path / "g.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ExportError, match="g.onnx.*ONNX Runtime rejected the model"):
        check_graph_file(bad, onnxruntime_ops=True)
