"""ONNX export: graphs and manifest, fp32 parity, quantized precisions, failed artifacts, bad configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.export import Artifact, ExportError, Tolerance, config_from_dict, export, validate
from vla_compress.export.onnx import OnnxExportConfig

HEADS = ("regression", "tokens")


def _io_names(manifest: dict, graph: str, side: str) -> list[str]:
    return [v["name"] for v in manifest["io"][graph][side]]


@pytest.mark.parametrize("head", HEADS)
def test_fp32_round_trip_is_tight(onnx_fp32, head):
    art = onnx_fp32[head]
    p = art.manifest["parity"]
    assert art.status == "ok" and p["passed"], p["failures"]
    assert p["max_abs"] < 1e-4 and p["cosine"] > 0.99999 and p["action_l1_max"] < 1e-4
    assert p["n_observations"] == 6
    if head == "tokens":
        assert p["token_match"] == 1.0 and p["token_match_teacher_forced"] == 1.0
    else:
        assert p["token_match"] is None


def test_manifest_describes_artifact(onnx_fp32):
    art = Artifact.load(onnx_fp32["regression"].path)
    m = json.loads((art.path / "artifact.json").read_text())
    assert m["format"] == "onnx" and m["precision"] == "fp32" and m["opset"] >= 18 and m["status"] == "ok"
    assert set(m["files"]) == {"policy_step.onnx", "config.json", "tokenizer.json", "dataset_statistics.json"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m["files"].values())
    art.verify_files()
    assert m["source"]["family"] == "reference" and len(m["source"]["weights_sha256"]) == 64
    assert _io_names(m, "policy_step", "inputs") == ["pixel_values", "text_ids", "text_mask", "state"]
    assert _io_names(m, "policy_step", "outputs") == ["actions"]
    shapes = {v["name"]: v["shape"] for v in m["io"]["policy_step"]["inputs"]}
    assert shapes["text_ids"] == ["batch", "text"] and shapes["pixel_values"][0] == "batch"
    assert m["config"]["format"] == "onnx" and m["graphs"]["policy_step"]["external_data"] is False


def test_tokens_graphs_use_decoder_with_past_names(onnx_fp32, tiny_models):
    m = onnx_fp32["tokens"].manifest
    layers = tiny_models["tokens"].cfg.backbone.num_layers
    kv = [f"{i}.{t}" for i in range(layers) for t in ("key", "value")]
    assert _io_names(m, "prefill", "inputs") == ["pixel_values", "text_ids", "text_mask", "state"]
    assert _io_names(m, "prefill", "outputs") == ["bin_logits", "attention_mask", *[f"present.{k}" for k in kv]]
    assert _io_names(m, "decode", "inputs") == ["token_ids", "attention_mask", "position_ids",
                                                *[f"past_key_values.{k}" for k in kv]]
    assert _io_names(m, "decode", "outputs") == ["bin_logits", *[f"present.{k}" for k in kv]]
    past = {v["name"]: v["shape"] for v in m["io"]["decode"]["inputs"]}["past_key_values.0.key"]
    assert past[0] == "batch" and past[2] == "past"
    assert {v["name"]: v["shape"] for v in m["io"]["prefill"]["outputs"]}["bin_logits"] == ["batch", 256]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("precision,op", [("int8-dynamic", "MatMulInteger"), ("int4-weight", "MatMulNBits"),
                                          ("int8-static", "QuantizeLinear")])
def test_quantized_exports_report_parity(onnx_fp32, tiny_models, observations, tmp_path, head, precision, op):
    vla = tiny_models[head]
    # A random model's action-token logits are near ties, so quantization noise flips tokens to
    # arbitrary bins; its tokens head is judged on the logits alone here.
    tol = None if head == "regression" else Tolerance(min_cosine=0.98)
    cfg = OnnxExportConfig(precision=precision, tolerance=tol)
    art = export(vla, cfg, tmp_path / precision, base=onnx_fp32[head], calibration=observations[:4])
    assert art.status == "unvalidated" and art.precision == precision
    assert all(g["ops"].get(op, 0) > 0 for g in art.manifest["graphs"].values())
    report = validate(art, vla, observations)
    assert Artifact.load(art.path).status == ("ok" if report.passed else "failed")
    assert report.passed, report.summary()
    assert 0 < report.max_abs < 1.0 and report.cosine > 0.98
    if head == "tokens":
        assert 0.0 <= report.token_match <= 1.0 and report.token_match_teacher_forced is not None


def test_external_data_and_source_checkpoint(onnx_fp32, tiny_models, tiny_checkpoints, observations, tmp_path):
    # "always" exercises the > 1.5 GiB path on a tiny model: weights in <graph>.onnx.data
    vla = tiny_models["regression"]
    art = export(vla, OnnxExportConfig(precision="int4-weight", external_data="always"), tmp_path / "ext",
                 base=onnx_fp32["regression"], source=tiny_checkpoints["regression"])
    assert "policy_step.onnx.data" in art.files and art.manifest["graphs"]["policy_step"]["external_data"]
    assert set(art.manifest["source"]["checkpoint_files"]) >= {"model.safetensors", "config.json"}
    assert validate(art, vla, observations[:2]).passed


def test_perturbed_weight_fails_validation_and_is_marked_failed(onnx_fp32, tiny_models, observations, tmp_path):
    import onnx
    from onnx import numpy_helper

    src = onnx_fp32["regression"].path
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "policy_step.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    # the last MatMul with a weight initializer: the action head's output layer
    node = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits][-1]
    w = inits[node.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
    onnx.save(model, str(dst / "policy_step.onnx"))

    with pytest.raises(ExportError, match="sha256 differs"):
        Artifact.load(dst).verify_files()
    report = validate(dst, tiny_models["regression"], observations)
    assert not report.passed and any("max abs" in f for f in report.failures)
    art = Artifact.load(dst)
    assert art.status == "failed" and art.manifest["parity"]["failures"] == report.failures
    assert (dst / "policy_step.onnx").is_file()  # kept, not deleted

    from vla_compress.evaluate.rollout import PolicySpec

    with pytest.raises(ExportError, match="failed validation.*allow_failed"):
        PolicySpec("onnx", str(dst)).build()
    assert PolicySpec("onnx", str(dst), {"allow_failed": True}).build().artifact.status == "failed"


def test_export_error_leaves_failed_manifest(onnx_fp32, tiny_models, tmp_path, monkeypatch):
    from vla_compress.export.onnx import exporter

    def boom(*args, **kwargs):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(exporter, "quantize", boom)
    with pytest.raises(ExportError, match="int8-dynamic.*quantizer exploded"):
        export(tiny_models["regression"], OnnxExportConfig(precision="int8-dynamic"), tmp_path / "x",
               base=onnx_fp32["regression"])
    art = Artifact.load(tmp_path / "x")
    assert art.status == "failed" and "quantizer exploded" in art.manifest["error"]
    with pytest.raises(ExportError, match="quantizer exploded"):
        art.require_usable()


def test_unsupported_configurations_give_clear_errors(onnx_fp32, tiny_models, tmp_path):
    with pytest.raises(ConfigError, match="unknown precision 'int3'; supported: fp32, int8-dynamic, int8-static, int4-weight"):
        OnnxExportConfig(precision="int3")
    with pytest.raises(ConfigError, match="opset must be an integer >= 18"):
        OnnxExportConfig(opset=17)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; known: gguf, onnx, openvino, tensorrt"):
        config_from_dict({"format": "tflite"})
    with pytest.raises(ConfigError, match="unknown tolerance keys"):
        OnnxExportConfig(tolerance={"max_abss": 1.0})
    with pytest.raises(ConfigError, match="int8-static export needs calibration observations"):
        export(tiny_models["tokens"], OnnxExportConfig(precision="int8-static"), tmp_path / "s")
    with pytest.raises(ConfigError, match="base must be an fp32 ONNX artifact"):
        bad = Artifact(onnx_fp32["tokens"].path, {**onnx_fp32["tokens"].manifest, "precision": "int4-weight"})
        export(tiny_models["tokens"], OnnxExportConfig(precision="int8-dynamic"), tmp_path / "b", base=bad)
    with pytest.raises(ConfigError, match="different weights"):
        export(tiny_models["tokens"], OnnxExportConfig(precision="int8-dynamic"), tmp_path / "w",
               base=onnx_fp32["regression"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an artifact directory; refusing to overwrite"):
        export(tiny_models["regression"], OnnxExportConfig(), tmp_path / "busy", base=onnx_fp32["regression"])
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="not the one this artifact came from"):
        validate(onnx_fp32["regression"], tiny_models["tokens"], [{}])


def test_config_round_trips_through_dict():
    cfg = OnnxExportConfig(precision="int4-weight", block_size=64, tolerance=Tolerance(min_cosine=0.9))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["format"] == "onnx" and d["version"] == 1
    assert config_from_dict(d) == cfg
    assert cfg.tolerance_for("tokens") == Tolerance(min_cosine=0.9)
    assert OnnxExportConfig().tolerance_for("regression").max_abs == 1e-4


def test_parity_compare_flags_each_threshold():
    from vla_compress.export.parity import compare

    ref = {"actions": np.zeros((2, 2, 4)), "bins": np.zeros((2, 8), int), "bin_logits": np.ones((2, 8, 256))}
    got = {"actions": np.full((2, 2, 4), 0.1), "bins": np.ones((2, 8), int), "bin_logits": -np.ones((2, 8, 256))}
    r = compare("tokens", ref, got, Tolerance(max_abs=1.0, min_cosine=0.5, max_action_l1=0.05, min_token_match=0.5))
    assert not r.passed and len(r.failures) == 4 and r.token_match == 0.0 and r.cosine == pytest.approx(-1.0)
    assert "FAIL" in r.summary()


def test_cosine_gate_ignores_near_rest_observations_but_reports_them():
    """A robot nearly at rest has a tiny action chunk whose direction is all rounding: its cosine is
    reported, not gated; max abs still applies to it. A large-norm observation is always gated."""
    import numpy as np

    from vla_compress.export.base import Tolerance
    from vla_compress.export.parity import compare

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 2, 4))
    ref[3] *= 0.01  # at rest
    got = ref.copy()
    got[3] += rng.normal(scale=0.01, size=(2, 4))  # direction scrambled, absolute error 0.01
    tol = Tolerance(max_abs=0.05, min_cosine=0.99)
    r = compare("regression", {"actions": ref}, {"actions": got}, tol)
    assert r.passed and r.small_norm_observations == 1 and r.cosine_small_norm < 0.9
    got[5] += 0.3 * rng.normal(size=(2, 4))  # a normal observation that really differs
    r = compare("regression", {"actions": ref}, {"actions": got}, Tolerance(min_cosine=0.99))
    assert not r.passed and "cosine" in r.failures[0]
