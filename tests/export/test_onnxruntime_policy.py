"""The ONNX Runtime policy: built from an artifact directory alone, same actions as torch."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.rollout import PolicySpec
from vla_compress.export import ExportError
from vla_compress.runtime import TorchPolicy
from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

from .conftest import observation


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_act_queue_matches_torch(onnx_fp32, tiny_models, tmp_path, head):
    # the artifact alone (copied away from everything else) is enough to run the policy
    art_dir = shutil.copytree(onnx_fp32[head].path, tmp_path / "artifact")
    vla = tiny_models[head]
    onnx_policy = PolicySpec("onnx", str(art_dir), {"threads": 1, "name": "ort"}).build()
    torch_policy = TorchPolicy(vla)
    assert isinstance(onnx_policy, OnnxRuntimePolicy) and onnx_policy.name == "ort"
    k = vla.cfg.chunk_size
    for step in range(2 * k + 1):  # closed-loop style: a new observation every step
        obs = observation(step)
        a_onnx, a_torch = onnx_policy.act(obs), torch_policy.act(obs)
        assert a_onnx.shape == (vla.cfg.action_dim,) and a_onnx.dtype == np.float32
        np.testing.assert_allclose(a_onnx, a_torch, atol=1e-5)
    assert len(onnx_policy.latencies_s) == len(torch_policy.latencies_s) == 3  # one inference per chunk
    comps = onnx_policy.component_latencies_s
    expected = {"policy_step"} if head == "regression" else {"prefill", "decode"}
    assert expected | {"preprocess", "postprocess"} == set(comps) and all(len(v) == 3 for v in comps.values())
    d = onnx_policy.describe()
    assert d["runtime"] == "onnx" and d["precision"] == "fp32" and d["head"] == head
    assert d["providers"] == ["CPUExecutionProvider"]
    onnx_policy.reset()
    np.testing.assert_allclose(onnx_policy.act(observation(0)), vla.act(observation(0))[0], atol=1e-5)


def test_execute_steps_and_verify(onnx_fp32, tmp_path):
    art_dir = shutil.copytree(onnx_fp32["tokens"].path, tmp_path / "artifact")
    p = PolicySpec("onnx", str(art_dir), {"execute_steps": 1, "verify": True}).build()
    p.act(observation(0))
    p.act(observation(1))
    assert len(p.latencies_s) == 2
    (art_dir / "tokenizer.json").write_text((art_dir / "tokenizer.json").read_text() + " ")
    with pytest.raises(ExportError, match="tokenizer.json: sha256 differs"):
        OnnxRuntimePolicy(art_dir, verify=True)


def test_bad_inputs_are_named(onnx_fp32, tmp_path):
    with pytest.raises(ConfigError, match="providers .*NoSuchExecutionProvider.* not available"):
        OnnxRuntimePolicy(onnx_fp32["regression"].path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ExportError, match="artifact directory not found"):
        OnnxRuntimePolicy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="artifact.json: file not found"):
        OnnxRuntimePolicy(tmp_path / "empty")
