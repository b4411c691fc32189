"""π0 / π0.5 through the exporters and runtimes: the ONNX policy_step graph (Euler loop unrolled, noise
as an input) with parity validation, the ONNX Runtime policy acting like the torch one, the two-graph
form (prefix -> keys/values, denoise_step -> velocity) run with the Euler loop outside the graph,
and GGUF refused with its reason."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vla_compress.errors import ConfigError
from vla_compress.export import export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.models.pi0 import Pi0

from .conftest import make_obs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def short_models() -> dict:
    """Two Euler steps (the exported graph unrolls them): keeps the ONNX traces short."""
    return {k: Pi0.tiny(seed=1, kind=k, num_inference_steps=2) for k in ("pi0", "pi05")}


@pytest.fixture(scope="module")
def observations() -> list[dict]:
    tasks = ["push the button", "pick up the object and place it at the goal", "open the drawer"]
    return [make_obs(10 + i, instruction=tasks[i % 3]) for i in range(4)]


@pytest.fixture(scope="module")
def onnx_artifacts(short_models, observations, tmp_path_factory) -> dict:
    out = {}
    for kind, vla in short_models.items():
        art = export(vla, OnnxExportConfig(), tmp_path_factory.mktemp(f"{kind}-onnx") / "fp32", example=observations[:2])
        validate(art, vla, observations)
        out[kind] = art
    return out


@pytest.mark.parametrize("kind, text", [("pi0", 12), ("pi05", 64)])
def test_onnx_fp32_export_is_tight(onnx_artifacts, kind, text):
    art = onnx_artifacts[kind]
    m = art.manifest
    v = m["parity"]
    assert m["status"] == "ok" and v["passed"], v["failures"]
    assert v["max_abs"] < 1e-4 and v["cosine"] > 0.99999 and v["n_observations"] == 4
    assert m["model"] == {"family": kind, "head": "regression", "policy_head": "flow", "chunk_size": 5,
                          "action_dim": 4, "integration_steps": 2, "n_action_steps": 3}
    io = m["io"]["policy_step"]
    assert [i["name"] for i in io["inputs"]] == ["pixel_values", "image_masks", "lang_tokens", "lang_masks", "state",
                                                "noise"]
    assert io["inputs"][0]["shape"] == ["batch", 2, 3, 16, 16] and io["inputs"][2]["shape"] == ["batch", text]
    assert io["outputs"][0]["shape"] == ["batch", 5, 4]
    for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json", "tokenizer/tokenizer.json",
                 "pi0_runtime.json", "policy_step.onnx"):
        assert (art.path / name).is_file(), name


def test_onnx_policy_acts_like_the_torch_policy(short_models, onnx_artifacts):
    """Both runtimes draw the start noise from the same seeded stream: same observation, same actions."""
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    vla = short_models["pi05"]
    onnx, torch_policy = OnnxRuntimePolicy(onnx_artifacts["pi05"].path), TorchPolicy(copy.deepcopy(vla))
    torch_policy.vla.noise_generator.manual_seed(vla.noise_seed)
    for i in range(2):  # two chunks: the queue refills after n_action_steps = 3 actions
        obs = make_obs(20 + i)
        a, b = [onnx.act(obs) for _ in range(3)], [torch_policy.act(obs) for _ in range(3)]
        assert np.allclose(np.stack(a), np.stack(b), atol=1e-4)


def test_prefix_and_denoise_graphs_with_the_euler_loop_outside(short_models, observations, tmp_path):
    """The two-graph form in ONNX Runtime: prefix keys/values computed once, the loop in numpy."""
    import onnxruntime as ort

    from vla_compress.export.onnx.steps import trace_graph
    from vla_compress.models.pi0.export_pi0 import euler, flow_graphs

    vla = short_models["pi0"]
    specs = flow_graphs(vla, vla.preprocess(observations[:2]))
    assert [s.name for s in specs] == ["prefix", "denoise_step"]
    for spec in specs:
        trace_graph(spec, tmp_path / f"{spec.name}.onnx", 20, vla, True, False)
    prefix, step = (ort.InferenceSession(str(tmp_path / f"{n}.onnx")) for n in ("prefix", "denoise_step"))
    x = vla.preprocess([make_obs(30, instruction="reach the goal")])  # another batch size, another prompt
    feeds = {k: v.numpy() for k, v in x.items()}
    pad, *kv = prefix.run(None, {i.name: feeds[i.name] for i in prefix.get_inputs()})
    names = [i.name for i in step.get_inputs()]
    assert names[:4] == ["prefix_pad", "state", "x_t", "t"] and names[4] == "past_key_values.0.key"

    def velocity(x_t, t):
        f = {"prefix_pad": pad, "state": feeds["state"], "x_t": x_t, "t": t, **dict(zip(names[4:], kv))}
        return step.run(["velocity"], {k: f[k] for k in names})[0]

    noise = torch.randn(vla.noise_shape(1), generator=torch.Generator().manual_seed(0))
    got = euler(velocity, noise.numpy(), vla.cfg.num_inference_steps)[:, :, :4]
    with torch.no_grad():
        want = vla.predict_chunk({**x, "noise": noise}).numpy()
    assert np.abs(got - want).max() < 1e-4


def test_gguf_is_refused_with_the_reason(short_models, tmp_path):
    from vla_compress.export.gguf import GgufExportConfig

    with pytest.raises(ConfigError, match="GGUF export does not support model family 'pi0' .*joint attention"):
        export(short_models["pi0"], GgufExportConfig(), tmp_path / "gguf")


def test_tensorrt_artifact_is_tensorrt_ready(short_models, observations, tmp_path):
    """No TensorRT here: the graph is checked op by op against TensorRT's ONNX support, unvalidated."""
    from vla_compress.export.tensorrt import TensorRTExportConfig

    art = export(short_models["pi05"], TensorRTExportConfig(), tmp_path / "fp16", example=observations[:2])
    validate(art, short_models["pi05"], observations[:2])
    ready = art.manifest["readiness"]["policy_step"]
    assert ready["ok"] and not ready["problems"] and art.manifest["status"] == "unvalidated"


def test_int8_dynamic_onnx_export_is_validated(short_models, onnx_artifacts, observations, tmp_path):
    art = export(short_models["pi0"], OnnxExportConfig(precision="int8-dynamic"), tmp_path / "int8",
                 base=onnx_artifacts["pi0"])
    report = validate(art, short_models["pi0"], observations)
    assert art.manifest["graphs"]["policy_step"]["ops"].get("MatMulInteger", 0) > 10
    assert art.manifest["status"] == ("ok" if report.passed else "failed") and report.cosine > 0.95
