"""SmolVLA through the rest of the toolkit: quantization passes (by canonical names), ONNX export of
the whole policy step (Euler loop unrolled, noise as an input) with parity validation, the ONNX
Runtime policy, and profiling (measured checkpoint, estimated `preset:smolvla-450m`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vla_compress.export import export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.models.smolvla import SmolVLA
from vla_compress.passes import PassContext, apply_passes, calibration_dataset, synthetic_observations
from vla_compress.passes.quantize import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                          Int8WeightOnlyConfig)
from vla_compress.nn.quantized import Int4WeightOnlyLinear, Int8DynamicLinear, Int8WeightOnlyLinear

from .conftest import make_obs

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def short_smolvla():
    """Two Euler steps (the exported graph unrolls them): keeps the ONNX trace short."""
    return SmolVLA.tiny(seed=1, num_steps=2)


@pytest.fixture(scope="session")
def observations() -> list[dict]:
    tasks = ["push the button", "pick up the object and place it at the goal", "open the drawer"]
    return [make_obs(10 + i, instruction=tasks[i % 3]) for i in range(4)]


def chunk(vla, obs, seed=0) -> torch.Tensor:
    x = vla.preprocess(obs)
    noise = torch.randn(vla.noise_shape(len(obs)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return vla.predict_chunk({**x, "noise": noise})


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("config, cls, max_rel_err, min_cos", [
    (Int8WeightOnlyConfig(), Int8WeightOnlyLinear, 0.06, 0.999),
    (Int8DynamicActivationInt8WeightConfig(), Int8DynamicLinear, 0.08, 0.998),
    (Int4WeightOnlyConfig(group_size=16), Int4WeightOnlyLinear, 0.6, 0.9),
])
def test_quantization_passes_apply_to_every_component(smolvla_model, observations, config, cls, max_rel_err, min_cos,
                                                     tmp_path):
    vla = copy.deepcopy(smolvla_model)
    ref = chunk(vla, observations)
    ctx = PassContext(calibration=calibration_dataset(vla, synthetic_observations(vla, 4), 1))
    apply_passes(vla, [config], ctx)
    quantized = {f"{c}.{n}" for c, m in vla.components().items() for n, sub in m.named_modules() if isinstance(sub, cls)}
    for name in ("vision_encoder.encoder.layers.0.self_attn.q_proj", "projector.modality_projection.proj",
                 "backbone.layers.0.mlp.up_proj", "action_head.lm_expert.layers.1.self_attn.k_proj",
                 "action_head.action_time_mlp_in"):
        assert name in quantized, name
    log = vla.compression_log[-1]
    assert log["after"]["state_dict_bytes"] < 0.45 * log["before"]["state_dict_bytes"]
    if isinstance(config, Int4WeightOnlyConfig):  # 8 input features are not a multiple of group 16
        assert "action_head.action_in_proj" in log["details"]["skipped"]
    got = chunk(vla, observations)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max() / ref.abs().max() < max_rel_err
    assert cosine(got, ref) > min_cos
    # saved in LeRobot's layout with quantization.json beside it, and reloaded to the same chunks
    from vla_compress.models.smolvla.adapter import SmolVLA

    loaded = SmolVLA.from_pretrained(vla.save_pretrained(tmp_path / "q"))
    assert torch.equal(chunk(loaded, observations), got)


@pytest.fixture(scope="session")
def onnx_fp32(short_smolvla, observations, tmp_path_factory):
    art = export(short_smolvla, OnnxExportConfig(), tmp_path_factory.mktemp("smolvla-onnx") / "fp32",
                 example=observations[:2])
    validate(art, short_smolvla, observations)
    return art


def test_onnx_fp32_export_is_tight(onnx_fp32):
    m = onnx_fp32.manifest
    v = m["parity"]
    assert m["status"] == "ok" and v["passed"], v["failures"]
    assert v["max_abs"] < 1e-4 and v["cosine"] > 0.99999 and v["n_observations"] == 4
    assert m["model"] == {"family": "smolvla", "head": "regression", "policy_head": "flow", "chunk_size": 5,
                          "action_dim": 4, "integration_steps": 2, "n_action_steps": 3}
    io = m["io"]["policy_step"]
    assert [i["name"] for i in io["inputs"]] == ["pixel_values", "image_masks", "lang_tokens", "lang_masks", "state",
                                                "noise"]
    assert io["inputs"][0]["shape"][:2] == ["batch", "cameras"] and io["outputs"][0]["shape"] == ["batch", 5, 4]
    for name in ("config.json", "policy_preprocessor.json", "vlm/tokenizer.json", "vlm/config.json",
                 "smolvla_runtime.json", "policy_step.onnx"):
        assert (onnx_fp32.path / name).is_file(), name


@pytest.mark.parametrize("precision, op", [("int8-dynamic", "MatMulInteger"), ("int4-weight", "MatMulNBits")])
def test_quantized_onnx_exports_are_validated(short_smolvla, onnx_fp32, observations, tmp_path, precision, op):
    art = export(short_smolvla, OnnxExportConfig(precision=precision, block_size=16), tmp_path / precision,
                 base=onnx_fp32)
    report = validate(art, short_smolvla, observations)
    assert art.manifest["graphs"]["policy_step"]["ops"].get(op, 0) > 10
    assert art.manifest["status"] == ("ok" if report.passed else "failed")
    assert report.cosine > 0.95 and np.isfinite(report.max_abs)
    if precision == "int8-dynamic":
        assert report.passed, report.summary()


def test_onnx_policy_acts_like_the_torch_policy(short_smolvla, onnx_fp32):
    """Both runtimes draw the start noise from the same seeded stream: same observation, same actions."""
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    onnx, torch_policy = OnnxRuntimePolicy(onnx_fp32.path), TorchPolicy(copy.deepcopy(short_smolvla))
    torch_policy.vla.noise_generator.manual_seed(short_smolvla.noise_seed)
    for i in range(2):  # two chunks: the queue refills after n_action_steps = 3 actions
        obs = make_obs(20 + i)
        a, b = [onnx.act(obs) for _ in range(3)], [torch_policy.act(obs) for _ in range(3)]
        assert np.allclose(np.stack(a), np.stack(b), atol=1e-4)
    assert len(onnx.latencies_s) == len(torch_policy.latencies_s) == 2


def test_profile_measures_the_checkpoint_and_estimates_the_preset(smolvla_dir):
    from vla_compress.profile.runner import profile_targets

    result = profile_targets([str(smolvla_dir), "preset:smolvla-450m"], hardware=["jetson-agx-orin-64gb"],
                             precisions=["fp16"], steps=2, warmup=1, threads=1)
    rows = {(r["target"], r["kind"]): r for r in result["rows"]}
    measured = rows[(str(smolvla_dir), "measured")]
    assert measured["p50_ms"] > 0 and measured["breakdown_ms"]["action_head"] > 0
    preset = rows[("preset:smolvla-450m", "estimated")]
    assert preset["error"] is None and preset["p50_ms"] > 0 and preset["fits"]
    trace = next(t for t in result["targets"] if t["target"] == "preset:smolvla-450m")["trace"]
    assert trace["params"] == 450_046_176 - 49_280 * 960  # every component (the unused VLM lm_head is none)
    assert trace["calls"]["action_head"] == 10 and trace["model"]["tokens"]["prefill"] == 241
