"""A torch-quantized model keeps its own integers and scales in its ONNX export (export/onnx/carry.py)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.passes.conftest import context_for
from vla_compress.export import export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.export.onnx.carry import carry_quantization
from vla_compress.export.onnx.exporter import QuantizationCarryWarning
from vla_compress.passes import apply_passes
from vla_compress.passes.quantize import Int4WeightOnlyConfig, Int8StaticActivationInt8WeightConfig
from vla_compress.nn.quantized import Int4WeightOnlyLinear, Int8WeightOnlyLinear
from vla_compress.nn.quantized_state import quantized_modules


def quantized(tiny_models, head: str, config):
    vla = copy.deepcopy(tiny_models[head])
    return apply_passes(vla, [config], context_for(vla, batch_size=2))


def initializers(artifact, graph: str) -> dict[str, np.ndarray]:
    model = onnx.load(str(artifact.file(artifact.manifest["graphs"][graph]["file"])))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def carried(vla, observations, tmp_path, name: str, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuantizationCarryWarning)  # everything carries exactly
        art = export(vla, OnnxExportConfig(**config), tmp_path / name, example=observations[:2],
                     calibration=observations)
    return art, validate(art, vla, observations)


def requantized(vla, observations, tmp_path, precision: str, **config):
    with pytest.warns(QuantizationCarryWarning, match="carry_quantization is off"):
        art = export(vla, OnnxExportConfig(precision=precision, carry_quantization=False, **config),
                     tmp_path / "requantized", example=observations[:2], calibration=observations)
    assert not art.manifest["quantization_carry"]["layers"]
    return validate(art, vla, observations)


def test_int8_static_graph_holds_torch_integers_and_scales(tiny_models, observations, tmp_path):
    vla = quantized(tiny_models, "regression", Int8StaticActivationInt8WeightConfig())
    mods = quantized_modules(vla)
    # the patch-embedding Conv (no torch quantization to carry) is quantized by ONNX Runtime in both
    # graphs, so the two differ only in how the Linears got their integers
    art, report = carried(vla, observations, tmp_path, "carried", precision="int8-static", quantize_conv=True)
    carry = art.manifest["quantization_carry"]
    assert set(carry["layers"]) == set(mods) and not carry["not_carried"]
    assert all(e["scheme"] == "int8_static" and e["graphs"] == ["policy_step"] for e in carry["layers"].values())
    inits = initializers(art, "policy_step")
    for i, node in enumerate(art.manifest["graphs"]["policy_step"]["carried_nodes"]):
        prefix = node[: -len(".matmul")]
        m = mods[prefix.split(".", 2)[2]]
        w = inits[f"{prefix}.weight_int8"]
        assert w.dtype == np.int8 and np.array_equal(w, m.qweight.numpy().T)
        assert np.array_equal(inits[f"{prefix}.weight_scale"], m.scale.numpy())
        assert inits[f"{prefix}.input_scale"] == np.float32(float(m.input_scale))
        assert inits[f"{prefix}.input_zero_point"] == 0
    assert art.manifest["graphs"]["policy_step"]["ops"]["QuantizeLinear"] >= len(mods)
    # closer to the quantized torch model than re-quantizing its dequantized weights in ONNX
    again = requantized(vla, observations, tmp_path, "int8-static", quantize_conv=True)
    assert report.passed
    assert report.action_l1_mean < again.action_l1_mean and report.max_abs < again.max_abs


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_int4_awq_graph_holds_torch_nibbles_scales_and_smoothing(tiny_models, observations, tmp_path, head):
    vla = quantized(tiny_models, head, Int4WeightOnlyConfig(group_size=32, awq=True))
    mods = quantized_modules(vla)
    assert any(m.smooth is not None for m in mods.values())
    art, report = carried(vla, observations, tmp_path, "carried", precision="int4-weight")
    carry = art.manifest["quantization_carry"]
    graph = "policy_step" if head == "regression" else "prefill"
    inits = initializers(art, graph)
    model = onnx.load(str(art.file(f"{graph}.onnx")))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    by_name = {n.name: n for n in nbits}
    checked = 0
    for name, m in mods.items():
        if name == "action_head" and head == "tokens":
            continue  # its action-bin rows are carried as "action_head[start:]" (below)
        assert carry["layers"][name]["scheme"] == "int4_weight_only" and carry["layers"][name]["exact"]
        (node,) = [n for n in by_name if n.startswith("carry.") and n.split(".", 2)[2] == f"{name}.matmul"]
        prefix = node[: -len(".matmul")]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in by_name[node].attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["K"] == m.in_features
        assert np.array_equal(inits[f"{prefix}.weight_nbits"].reshape(m.out_features, -1), m.qweight.numpy())
        assert np.array_equal(inits[f"{prefix}.scales"], m.scale.float().numpy().reshape(-1))
        if m.smooth is not None:
            assert np.array_equal(inits[f"{prefix}.awq_smooth"], m.smooth.numpy())
        checked += 1
    assert checked >= 20
    # not quantized in torch (4 inputs: no group of 32), so not carried: the precision quantizes what it can
    assert "proprio_projector.fc1" not in carry["layers"]
    if head == "tokens":  # the 256 action-bin rows of the quantized LM head, carried in prefill and decode
        rows = f"action_head[{vla.action_head.out_features - 256}:]"
        assert set(carry["layers"][rows]["graphs"]) == {"prefill", "decode"} and "action_head" not in carry["not_carried"]
        bins = inits[[k for k in inits if k.endswith(f"{rows}.weight_nbits")][0]]
        assert np.array_equal(bins.reshape(256, -1), vla.action_head.qweight[-256:].numpy())
    assert report.passed
    again = requantized(vla, observations, tmp_path, "int4-weight")
    if head == "regression":
        assert report.max_abs < 1e-4 < again.max_abs  # exact integers: only float rounding remains
        assert report.action_l1_mean < again.action_l1_mean
    else:  # a random tokens model decodes near-tied logits: compare the logits along the torch tokens
        assert report.token_match >= again.token_match
        assert report.max_abs < again.max_abs


def test_fp32_precision_keeps_the_carried_layers_and_base_reuse(tiny_models, observations, tmp_path):
    vla = quantized(tiny_models, "regression", Int4WeightOnlyConfig(group_size=32))
    art, report = carried(vla, observations, tmp_path, "fp32", precision="fp32")
    assert art.manifest["graphs"]["policy_step"]["ops"]["MatMulNBits"] == len(art.manifest["quantization_carry"]["layers"])
    assert report.passed and report.max_abs < 1e-4
    # quantizing that fp32 artifact to int8-dynamic leaves the carried layers as they are
    again = export(vla, OnnxExportConfig(precision="int8-dynamic"), tmp_path / "from-base", base=art)
    ops = again.manifest["graphs"]["policy_step"]["ops"]
    assert ops["MatMulNBits"] == art.manifest["graphs"]["policy_step"]["ops"]["MatMulNBits"]
    assert again.manifest["quantization_carry"]["layers"] == art.manifest["quantization_carry"]["layers"]
    assert validate(again, vla, observations).passed


def test_a_module_missing_from_the_graph_is_reported_not_carried(onnx_fp32):
    model = onnx.load(str(onnx_fp32["regression"].file("policy_step.onnx")))
    stray = Int8WeightOnlyLinear.from_float(torch.nn.Linear(8, 8))
    rep = carry_quantization(model, {"extra.linear": stray})
    assert not rep["layers"] and "not the constant of a MatMul/Gemm" in rep["not_carried"]["extra.linear"]


def test_int4_nibble_layout_is_matmulnbits_layout():
    """MatMulNBits (zero point 8) computes the same weight as the torch module's packing."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    lin = torch.nn.Linear(64, 16, bias=False)
    m = Int4WeightOnlyLinear.from_float(lin, 32)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.graph.node.append(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    model.graph.initializer.append(numpy_helper.from_array(m.dequantize().numpy().T.copy(), "w"))
    rep = carry_quantization(model, {"lin": m})
    assert rep["nodes"] == ["carry.0.lin.matmul"]
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(y, m(torch.from_numpy(x)).numpy(), atol=1e-5)


# --- GGUF ---------------------------------------------------------------------------------------
def gguf_export(vla, observations, tmp_path, name: str, **config):
    from vla_compress.export.gguf import GgufExportConfig

    return export(vla, GgufExportConfig(**config), tmp_path / name, example=observations[:2])


def gguf_tensors(artifact) -> dict:
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(str(artifact.file("backbone.gguf"))).tensors}


@pytest.fixture
def gguf_model():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (./install.sh builds it)")
    from tests.export.test_gguf import _model

    return _model  # 256-wide backbone: every row a multiple of 256, as llama.cpp's K-quants need


@pytest.mark.gguf
def test_gguf_int4_groups_become_q4_0_with_torch_values(gguf_model, observations, tmp_path):
    from gguf import GGMLQuantizationType, quants

    from vla_compress.export.gguf.writer import permute_rope

    vla = gguf_model("regression")
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32)], context_for(vla, batch_size=2))
    art = gguf_export(vla, observations, tmp_path, "carried", precision="q4_k_m")
    tensors = gguf_tensors(art)
    layer = vla.backbone.layers[1]
    for tensor, m, heads in (("blk.1.ffn_up.weight", layer.mlp.up_proj, None),
                             ("blk.1.attn_q.weight", layer.self_attn.q_proj, 4)):
        t = tensors[tensor]
        assert t.tensor_type == GGMLQuantizationType.Q4_0
        w = m.dequantize().numpy()
        expect = permute_rope(w, heads) if heads else w
        assert np.array_equal(quants.dequantize(np.array(t.data), t.tensor_type).reshape(expect.shape), expect)
    carry = art.manifest["quantization_carry"]
    assert carry["layers"]["backbone.layers.1.mlp.up_proj"]["ggml_type"] == "Q4_0"
    assert carry["layers"]["backbone.layers.1.mlp.up_proj"]["exact"]
    assert carry["layers"]["action_head.fc1"]["graphs"] == ["action_head"]  # the ONNX side graph carries the rest
    assert art.manifest["gguf"]["by_tensor"]["token_embd.weight"] != "Q4_0"  # float in torch: the precision decides
    carried = validate(art, vla, observations)
    from vla_compress.export.gguf import GgufExportConfig

    with pytest.warns(QuantizationCarryWarning):
        again = export(vla, GgufExportConfig(precision="q4_k_m", carry_quantization=False), tmp_path / "again",
                       example=observations[:2])
    assert gguf_tensors(again)["blk.1.ffn_up.weight"].tensor_type == GGMLQuantizationType.Q4_K
    assert carried.action_l1_mean < validate(again, vla, observations).action_l1_mean


@pytest.mark.gguf
def test_gguf_int8_rows_become_q8_0_with_torch_int8_values(gguf_model, observations, tmp_path):
    from gguf import GGMLQuantizationType

    from vla_compress.passes.quantize import Int8WeightOnlyConfig

    vla = gguf_model("tokens")
    apply_passes(vla, [Int8WeightOnlyConfig(where="backbone")], context_for(vla, batch_size=2))
    with pytest.warns(QuantizationCarryWarning, match="float16 scale"):
        art = gguf_export(vla, observations, tmp_path, "carried", precision="f32")
    t = gguf_tensors(art)["blk.0.ffn_down.weight"]
    m = vla.backbone.layers[0].mlp.down_proj
    assert t.tensor_type == GGMLQuantizationType.Q8_0
    blocks = np.array(t.data).reshape(m.out_features, m.in_features // 32, 34)
    assert np.array_equal(blocks[..., 2:].copy().view(np.int8).reshape(m.out_features, -1), m.qweight.numpy())
    assert np.array_equal(blocks[..., :2].copy().view(np.float16)[..., 0],
                          np.repeat(m.scale.numpy().astype(np.float16)[:, None], m.in_features // 32, axis=1))
    carry = art.manifest["quantization_carry"]
    assert not carry["layers"]["backbone.layers.0.mlp.down_proj"]["exact"]  # float16 block scales
    assert "backbone.layers.0.mlp.down_proj" in carry["inexact"]
    assert validate(art, vla, observations).token_match >= 0.5


@pytest.mark.gguf
def test_gguf_awq_cannot_carry_exactly_and_says_so(gguf_model, observations, tmp_path):
    vla = gguf_model("regression")
    apply_passes(vla, [Int4WeightOnlyConfig(group_size=32, awq=True, where="backbone")], context_for(vla, batch_size=2))
    smoothed = [n for n, m in quantized_modules(vla).items() if m.smooth is not None]
    with pytest.warns(QuantizationCarryWarning, match="AWQ"):
        art = gguf_export(vla, observations, tmp_path, "carried", precision="f16")
    carry = art.manifest["quantization_carry"]
    assert smoothed and all("AWQ" in carry["inexact"][n] for n in smoothed)
    assert all(carry["layers"][n]["ggml_type"] == "Q4_1" for n in smoothed)


# --- TensorRT ------------------------------------------------------------------------------------
def trt_export(vla, observations, tmp_path, name: str, **config):
    from vla_compress.export.tensorrt import TensorRTExportConfig

    return export(vla, TensorRTExportConfig(**config), tmp_path / name, example=observations[:2],
                  calibration=observations)


def test_tensorrt_int8_takes_its_qdq_from_the_torch_scales(tiny_models, observations, tmp_path):
    vla = quantized(tiny_models, "regression", Int8StaticActivationInt8WeightConfig())
    mods = quantized_modules(vla)
    art = trt_export(vla, observations, tmp_path, "carried", precision="int8")
    assert art.manifest["readiness"]["policy_step"]["ok"]
    carry = art.manifest["quantization_carry"]
    assert set(carry["layers"]) == set(mods) and all("symmetric INT8" in e["tensorrt"] for e in carry["layers"].values())
    inits = initializers(art, "policy_step")
    name = "backbone.layers.1.mlp.down_proj"
    (prefix,) = {k.rsplit(".", 1)[0] for k in inits if k.startswith("carry.") and k.endswith(f"{name}.weight_int8")}
    assert np.array_equal(inits[f"{prefix}.weight_int8"], mods[name].qweight.numpy().T)
    assert inits[f"{prefix}.input_scale"] == np.float32(float(mods[name].input_scale))
    carried = validate(art, vla, observations)  # the graph TensorRT builds, run in ONNX Runtime
    with pytest.warns(QuantizationCarryWarning):
        again = trt_export(vla, observations, tmp_path, "again", precision="int8", carry_quantization=False)
    assert carried.passed and carried.action_l1_mean < validate(again, vla, observations).action_l1_mean


def test_tensorrt_int4_and_float_engines_say_what_was_not_carried(tiny_models, observations, tmp_path):
    vla = quantized(tiny_models, "regression", Int4WeightOnlyConfig(group_size=32))
    with pytest.warns(QuantizationCarryWarning, match="INT4 block-wise DequantizeLinear"):
        art = trt_export(vla, observations, tmp_path, "int8", precision="int8")
    assert "MatMulNBits" not in art.manifest["graphs"]["policy_step"]["ops"]  # TensorRT cannot parse it
    assert art.manifest["readiness"]["policy_step"]["ok"]
    assert set(art.manifest["quantization_carry"]["not_carried"]) == set(quantized_modules(vla))
    assert validate(art, vla, observations).passed
    with pytest.warns(QuantizationCarryWarning, match="TensorRT fp16 engine computes in float"):
        fp16 = trt_export(vla, observations, tmp_path, "fp16", precision="fp16")
    assert not fp16.manifest["quantization_carry"]["layers"]
    assert validate(fp16, vla, observations).max_abs < 1e-4  # the dequantized weights, exactly


@pytest.mark.parametrize("cls", ["Int8WeightOnlyLinear", "Int8DynamicLinear", "Int8StaticLinear"])
def test_int8_onnx_forms_compute_what_the_torch_modules_compute(cls):
    """Each carried int8 form, alone in a graph, against its torch module (ONNX Runtime's basic graph
    optimizations only: its extended ones fuse int8 weights into an activation-quantizing kernel,
    see carry.ORT_NOTE)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vla_compress.nn import quantized as modules

    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 24, bias=False)
    cls_ = getattr(modules, cls)
    m = cls_.from_float(lin, 0.02) if cls == "Int8StaticLinear" else cls_.from_float(lin)
    x = np.random.default_rng(1).standard_normal((2, 5, 48)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 24])],
                              [numpy_helper.from_array(m.dequantize().numpy().T.copy(), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rep = carry_quantization(model, {"lin": m})
    assert rep["layers"]["lin"]["exact"] and not any(t.name == "w" for t in model.graph.initializer)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    y = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(y, m(torch.from_numpy(x)).numpy(), atol=1e-5, rtol=1e-5)
