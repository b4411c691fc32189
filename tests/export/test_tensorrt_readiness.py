"""TensorRT-readiness of real exported tiny ONNX graphs (fp32 and the TensorRT int8/fp8 Q/DQ graphs
pass; INT4 MatMulNBits, dynamic INT8 and asymmetric Q/DQ are flagged) and of hand-made graphs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vla_compress.errors import ConfigError
from vla_compress.export import Artifact, ExportError, Tolerance, export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.export.tensorrt import TensorRTExportConfig, check_graph, require_ready

HEADS = ("regression", "tokens")


@pytest.fixture(scope="module")
def onnx_quantized(tiny_models, onnx_fp32, observations, tmp_path_factory) -> dict:
    """(head, precision) -> ONNX artifact quantized by the ONNX exporter (not validated)."""
    root = tmp_path_factory.mktemp("onnx-q")
    return {(head, p): export(tiny_models[head], OnnxExportConfig(precision=p), root / f"{head}-{p}",
                              base=onnx_fp32[head], calibration=observations[:3])
            for head in HEADS for p in ("int8-static", "int8-dynamic", "int4-weight")}


@pytest.fixture(scope="module")
def trt_qdq(tiny_models, onnx_fp32, observations, tmp_path_factory) -> dict:
    """(head, precision) -> TensorRT artifact (int8 / fp8 Q/DQ made from the fp32 graph), no engine."""
    root = tmp_path_factory.mktemp("trt-q")
    out = {}
    for head in HEADS:
        for p in ("int8", "fp8"):
            cfg = TensorRTExportConfig(precision=p, build_engine="never")
            out[head, p] = export(tiny_models[head], cfg, root / f"{head}-{p}", base=onnx_fp32[head],
                                  calibration=observations[:3])
    return out


def _graphs(art: Artifact) -> list:
    return [art.path / g["file"] for g in art.manifest["graphs"].values()]


@pytest.mark.parametrize("head", HEADS)
def test_fp32_graphs_are_ready(onnx_fp32, head):
    for path in _graphs(onnx_fp32[head]):
        for precision in (None, "fp32", "fp16"):
            r = check_graph(path, precision)
            assert r.ok, r.summary()
            assert r.precision == (precision or "fp16") and r.opset == 18 and r.qdq == {}
            assert r.ops.get("MatMul", 0) > 0 and not r.warnings


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("precision,qtype,zp_type", [("int8", "int8", TensorProto.INT8),
                                                     ("fp8", "fp8", TensorProto.FLOAT8E4M3FN)])
def test_tensorrt_qdq_graphs_are_ready_and_symmetric(trt_qdq, head, precision, qtype, zp_type):
    art = trt_qdq[head, precision]
    assert art.status == "unvalidated"
    for path in _graphs(art):
        r = check_graph(path, precision)
        assert r.ok, r.summary()
        assert r.qdq.get(qtype, 0) > 0 and set(r.qdq) == {qtype}
        # checked independently of the readiness code: every zero point is a 0 of the quantized type
        model = onnx.load(str(path))
        inits = {t.name: t for t in model.graph.initializer}
        zps = [inits[n.input[2]] for n in model.graph.node
               if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
        assert zps and all(z.data_type == zp_type for z in zps)
        assert all(not np.any(numpy_helper.to_array(z).astype(np.float32)) for z in zps)
        assert not any(inits[n.input[0]].data_type == TensorProto.INT32 for n in model.graph.node
                       if n.op_type == "DequantizeLinear" and n.input[0] in inits)  # biases stay float
        if precision == "fp8":
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
    assert all(r["ok"] for r in art.manifest["readiness"].values())


@pytest.mark.parametrize("head", HEADS)
def test_int4_matmulnbits_is_flagged(onnx_quantized, head):
    art = onnx_quantized[head, "int4-weight"]
    for path in _graphs(art):
        r = check_graph(path)
        assert not r.ok
        (p,) = [p for p in r.problems if p["op"] == "com.microsoft.MatMulNBits"]
        assert p["count"] == r.ops["MatMulNBits"] > 0
        for hint in ("not supported by TensorRT", "INT8", "FP8", "Model Optimizer"):
            assert hint in p["problem"]
    with pytest.raises(ExportError, match="MatMulNBits"):
        require_ready({"g": check_graph(_graphs(art)[0])}, art.path)


def test_dynamic_int8_is_flagged(onnx_quantized):
    r = check_graph(_graphs(onnx_quantized["regression", "int8-dynamic"])[0])
    ops = {p["op"] for p in r.problems}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert "explicit symmetric Q/DQ" in r.summary()


def test_ort_int8_static_graph_is_flagged_as_asymmetric(onnx_quantized):
    """The ONNX exporter's int8-static graph is for ONNX Runtime: asymmetric activations and INT32
    biases, both of which TensorRT rejects; the TensorRT exporter quantizes symmetric Q/DQ instead."""
    r = check_graph(_graphs(onnx_quantized["regression", "int8-static"])[0], "int8")
    problems = " ".join(p["problem"] for p in r.problems)
    assert not r.ok and "non-zero zero point" in problems and "INT32 DequantizeLinear" in problems


def test_tensorrt_export_of_int4_base_fails_listing_ops(tiny_models, onnx_quantized, tmp_path):
    out = tmp_path / "trt-int4"
    with pytest.raises(ExportError, match="MatMulNBits") as e:
        export(tiny_models["regression"], TensorRTExportConfig(precision="int8", build_engine="never"), out,
               base=onnx_quantized["regression", "int4-weight"])
    assert "Model Optimizer" in str(e.value)
    m = json.loads((out / "artifact.json").read_text())
    assert m["status"] == "failed" and "MatMulNBits" in m["error"]
    assert not m["readiness"]["policy_step"]["ok"] and (out / "build_engine.sh").is_file()
    art = Artifact.load(out)
    with pytest.raises(ExportError, match="failed validation"):
        art.require_usable()
    with pytest.raises(ExportError, match="not TensorRT-ready"):
        validate(art, tiny_models["regression"], [])


@pytest.mark.parametrize("head", HEADS)
def test_qdq_graph_parity_in_onnxruntime(trt_qdq, tiny_models, observations, head):
    """Without an engine, validation runs the exact Q/DQ graph TensorRT builds in ONNX Runtime and
    keeps the status "unvalidated" (no engine was checked), or "failed" when the graph misses."""
    art = trt_qdq[head, "int8"]
    tol = None if head == "regression" else Tolerance(min_cosine=0.98)  # random tokens head: near-tie logits
    if tol is not None:
        art.manifest["config"]["tolerance"] = tol.to_dict()
        art.save()
    report = validate(art, tiny_models[head], observations)
    m = Artifact.load(art.path).manifest
    assert report.passed, report.summary()
    assert 0 < report.max_abs < 0.5 and report.cosine > 0.98
    assert m["graph_parity"]["passed"] and m["parity"] is None
    assert m["status"] == "unvalidated" and "engine not validated" in m["validation_note"]


def test_fp8_scales_are_amax_over_448(trt_qdq, onnx_fp32):
    """FP8 weight scales are the fp32 weight's amax / 448 (E4M3's largest finite value)."""
    fp8 = onnx.load(str(_graphs(trt_qdq["regression", "fp8"])[0]))
    inits = {t.name: numpy_helper.to_array(t) for t in fp8.graph.initializer if t.data_type == TensorProto.FLOAT}
    checked = 0
    for n in fp8.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in inits:
            w = inits[n.input[0]]
            assert float(inits[n.input[1]]) == pytest.approx(np.abs(w).max() / 448.0, rel=1e-6)
            checked += 1
    assert checked > 0
    plan = json.loads((trt_qdq["regression", "fp8"].path / "build_plan.json").read_text())
    assert plan["flags"] == ["FP8", "FP16"] and plan["min_compute_capability"] == [8, 9]


# --- hand-made graphs: each rule on its own ---------------------------------------------------
def _model(nodes, inits, inputs=None, opset=18):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _q(scale, zp, dtype=TensorProto.INT8):
    return [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
            helper.make_tensor("z", dtype, np.shape(zp), np.ravel(zp).tolist())]


def test_unsupported_op_and_unnamed_dynamic_axis(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])]
    r = check_graph(_save(tmp_path, _model([helper.make_node("Unique", ["x"], ["y"], name="u")], [], inputs)))
    assert {p["op"] for p in r.problems} == {"Unique", "input"}
    assert "dynamic without a name" in r.summary() and "u" in r.summary()


def test_quantize_must_feed_dequantize(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q0"),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    r = check_graph(_save(tmp_path, _model(nodes, _q(0.1, 0))), "int8")
    assert [p["op"] for p in r.problems] == ["QuantizeLinear"] and "explicit Q/DQ pairs" in r.summary()


def test_per_channel_activation_and_uint8_are_flagged(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    r = check_graph(_save(tmp_path, _model(nodes, _q([0.1] * 4, [0] * 4))), "int8")
    assert "per tensor" in r.summary()
    r = check_graph(_save(tmp_path, _model(nodes[:1] + nodes[1:], _q(0.1, 0, TensorProto.UINT8)), "u.onnx"), "int8")
    assert "UINT8 quantization is not supported" in r.summary()


def test_precision_must_match_the_graph(tmp_path, onnx_fp32, trt_qdq):
    fp32 = _graphs(onnx_fp32["regression"])[0]
    assert "needs explicit INT8 Q/DQ" in check_graph(fp32, "int8").summary()
    assert "needs FP8 E4M3 Q/DQ" in check_graph(fp32, "fp8").summary()
    int8 = _graphs(trt_qdq["regression", "int8"])[0]
    assert "build it with precision int8" in check_graph(int8, "fp16").summary()


def test_missing_or_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="ONNX file not found"):
        check_graph(tmp_path / "nope.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ExportError, match="bad.onnx: not a readable ONNX model"):
        check_graph(tmp_path / "bad.onnx")


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        TensorRTExportConfig(precision="int4")
    with pytest.raises(ConfigError, match="opt must not exceed max"):
        TensorRTExportConfig(opt_batch=4, max_batch=2)
    with pytest.raises(ConfigError, match="build_engine"):
        TensorRTExportConfig(build_engine="sometimes")
    assert TensorRTExportConfig.from_dict(TensorRTExportConfig(precision="int8").to_dict()).precision == "int8"


def test_readiness_command(onnx_fp32, onnx_quantized, tmp_path):
    """`python -m vla_compress.export.tensorrt PATH...`: exit 0 when ready, 1 with the offending ops, 2 on bad input."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "vla_compress.export.tensorrt", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    ok = run(onnx_fp32["regression"].path)
    assert ok.returncode == 0 and "TensorRT-ready for fp16" in ok.stdout and not ok.stderr
    bad = run(onnx_fp32["tokens"].path, onnx_quantized["regression", "int4-weight"].path)
    assert bad.returncode == 1 and "decode.onnx: TensorRT-ready" in bad.stdout
    assert "com.microsoft.MatMulNBits x" in bad.stdout
    assert run(tmp_path).returncode == 2 and "no .onnx files" in run(tmp_path).stdout
