"""π0 / π0.5 through the exporters and runtimes: the two-graph ONNX artifact (prefix -> keys/values
once, denoise_step -> velocity in an Euler loop the runtime runs from artifact.json's `model.loop`),
its parity against torch in fp32 and INT8, the ONNX Runtime and OpenVINO policies acting like the
torch one, the denoise-steps pass honoured by the artifact (through the CLI), the TensorRT-ready
form (an engine per graph), and GGUF refused with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vla_compress.errors import ConfigError
from vla_compress.export import Artifact, export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.models.pi0 import Pi0

from .conftest import make_obs

torch.set_num_threads(1)

KINDS = ("pi0", "pi05")


@pytest.fixture(scope="module")
def short_models() -> dict:
    """Two Euler steps: keeps the loop (and the tests) short."""
    return {k: Pi0.tiny(seed=1, kind=k, num_inference_steps=2) for k in KINDS}


@pytest.fixture(scope="module")
def observations() -> list[dict]:
    tasks = ["push the button", "pick up the object and place it at the goal", "open the drawer"]
    return [make_obs(10 + i, instruction=tasks[i % 3]) for i in range(4)]


@pytest.fixture(scope="module")
def onnx_artifacts(short_models, observations, tmp_path_factory) -> dict:
    """(kind, precision) -> validated ONNX artifact, fp32 traced once and int8-dynamic quantized from it."""
    out = {}
    for kind, vla in short_models.items():
        root = tmp_path_factory.mktemp(f"{kind}-onnx")
        fp32 = export(vla, OnnxExportConfig(), root / "fp32", example=observations[:2])
        validate(fp32, vla, observations)
        int8 = export(vla, OnnxExportConfig(precision="int8-dynamic"), root / "int8", base=fp32)
        validate(int8, vla, observations)
        out[kind, "fp32"], out[kind, "int8-dynamic"] = fp32, int8
    return out


def torch_chunks(vla, observations: list[dict], noise: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return vla.predict_chunk({**vla.preprocess(observations), "noise": torch.from_numpy(noise)}).numpy()


@pytest.mark.parametrize("kind, text", [("pi0", 12), ("pi05", 64)])
def test_the_artifact_is_two_graphs_and_the_loop(onnx_artifacts, kind, text):
    art = onnx_artifacts[kind, "fp32"]
    m = art.manifest
    v = m["parity"]
    assert m["status"] == "ok" and v["passed"], v["failures"]
    assert v["max_abs"] < 1e-4 and v["cosine"] > 0.99999 and v["n_observations"] == 4
    loop = m["model"].pop("loop")
    assert m["model"] == {"family": kind, "head": "flow", "policy_head": "flow", "chunk_size": 5, "action_dim": 4,
                          "integration_steps": 2, "n_action_steps": 3, "num_layers": 2}
    m["model"]["loop"] = loop
    assert (loop["prefix"], loop["step"], loop["steps"], loop["dt"], loop["times"]) == \
        ("prefix", "denoise_step", 2, -0.5, [1.0, 0.5])
    assert (loop["start"], loop["x"], loop["t"], loop["velocity"]) == ("noise", "x_t", "t", "velocity")
    assert loop["carry"] == {"prefix_pad": "prefix_pad", **{f"past_key_values.{i}.{kv}": f"present.{i}.{kv}"
                                                            for i in range(2) for kv in ("key", "value")}}
    assert set(m["graphs"]) == {"prefix", "denoise_step"}
    prefix, step = m["io"]["prefix"], m["io"]["denoise_step"]
    assert [i["name"] for i in prefix["inputs"]] == ["pixel_values", "image_masks", "lang_tokens", "lang_masks",
                                                    "state"]
    assert prefix["inputs"][0]["shape"] == ["batch", 2, 3, 16, 16] and prefix["inputs"][2]["shape"] == ["batch", text]
    length = 2 * 4 + text  # two cameras of (16 / 8)^2 patches, then the prompt
    assert [o["name"] for o in prefix["outputs"]] == ["prefix_pad", "present.0.key", "present.0.value",
                                                      "present.1.key", "present.1.value"]
    assert prefix["outputs"][0]["shape"] == ["batch", length]
    assert prefix["outputs"][1]["shape"] == ["batch", length, 1, 16]
    ins = {i["name"]: i["shape"] for i in step["inputs"]}
    assert ins["x_t"] == ["batch", 5, 8] and ins["t"] == ["batch"]
    assert ins["past_key_values.1.value"] == ["batch", "prefix", 1, 16]
    assert step["outputs"] == [{"name": "velocity", "dtype": "float32", "shape": ["batch", 5, 8]}]
    for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json", "tokenizer/tokenizer.json",
                 "pi0_runtime.json", "prefix.onnx", "denoise_step.onnx"):
        assert (art.path / name).is_file(), name
    assert not (art.path / "policy_step.onnx").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_int8_dynamic_quantizes_both_graphs_and_passes_parity(onnx_artifacts, kind):
    m = onnx_artifacts[kind, "int8-dynamic"].manifest
    assert m["status"] == "ok" and m["parity"]["passed"], m["parity"]["failures"]
    assert m["parity"]["action_l1_mean"] < 0.05 and m["parity"]["cosine"] > 0.99
    for graph in ("prefix", "denoise_step"):
        assert m["graphs"][graph]["ops"].get("MatMulInteger", 0) >= 4, graph


@pytest.mark.parametrize("kind, precision", [(k, p) for k in KINDS for p in ("fp32", "int8-dynamic")])
def test_runtime_policy_acts_like_the_torch_policy(short_models, onnx_artifacts, kind, precision):
    """Both runtimes draw the start noise from the same seeded stream: same observations, same actions
    (fp32: within the fp32 gate; int8: within the int8 gate's mean action error)."""
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    vla = short_models[kind]
    onnx, torch_policy = OnnxRuntimePolicy(onnx_artifacts[kind, precision].path), TorchPolicy(copy.deepcopy(vla))
    torch_policy.vla.noise_generator.manual_seed(vla.noise_seed)
    for i in range(2):  # two chunks: the queue refills after n_action_steps = 3 actions
        obs = make_obs(20 + i)
        a, b = np.stack([onnx.act(obs) for _ in range(3)]), np.stack([torch_policy.act(obs) for _ in range(3)])
        if precision == "fp32":
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
        else:
            scale = np.abs(b).mean() + 1e-6
            assert np.abs(a - b).mean() / scale < 0.1
    assert onnx.graphs.last_timing["decode_steps"] == 2  # the artifact's loop: prefix once, two denoise steps
    assert set(onnx.component_latencies_s) >= {"prefill", "decode"}


def test_another_batch_size_and_prompt_through_the_graphs(short_models, onnx_artifacts):
    """OnnxGraphs on a batch of 3 (traced with 2) with fresh noise: the torch chunk for that noise."""
    from vla_compress.runtime.onnxruntime_policy import OnnxGraphs

    vla = short_models["pi0"]
    art = onnx_artifacts["pi0", "fp32"]
    obs = [make_obs(30 + i, instruction=t) for i, t in enumerate(["reach the goal", "open it", "x"])]
    feeds = {k: v.numpy() for k, v in vla.preprocess(obs).items()}
    feeds["noise"] = np.random.default_rng(3).standard_normal(vla.noise_shape(3)).astype(np.float32)
    got = OnnxGraphs(art).predict(feeds)["actions"]
    assert np.abs(got - torch_chunks(vla, obs, feeds["noise"])).max() < 1e-4


def test_int8_static_calibrates_the_denoise_step_on_its_own_loop(short_models, onnx_artifacts, observations, tmp_path):
    """Static quantization's feeds: the processor's inputs for prefix, and the inputs the fp32 Euler loop
    really gives denoise_step (its keys/values, x_t and t), one per step."""
    from vla_compress.export.onnx.steps import calibration_feeds
    from vla_compress.export.family import get_export_family

    vla = short_models["pi0"]
    art = onnx_artifacts["pi0", "fp32"]
    graphs = {n: (art.file(g["file"]), 0) for n, g in art.manifest["graphs"].items()}
    feeds = calibration_feeds(vla, get_export_family("pi0"), tmp_path / "work", graphs, observations[:3], 1)
    assert len(feeds["prefix"]) == 3 and len(feeds["denoise_step"]) == 3 * 2
    assert [float(f["t"][0]) for f in feeds["denoise_step"][:2]] == [1.0, 0.5]
    assert feeds["denoise_step"][0]["past_key_values.0.key"].shape[1] == 20
    static = export(vla, OnnxExportConfig(precision="int8-static"), tmp_path / "static", calibration=observations[:3],
                    base=art)
    validate(static, vla, observations)
    for graph in ("prefix", "denoise_step"):
        assert static.manifest["graphs"][graph]["ops"].get("QuantizeLinear", 0) > 0, graph
    assert static.manifest["status"] == "ok" and static.manifest["parity"]["cosine"] > 0.99, static.manifest["parity"]


def test_a_loop_record_that_disagrees_is_refused(onnx_artifacts, tmp_path):
    import shutil

    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    src = onnx_artifacts["pi05", "fp32"].path
    for edit, message in [(lambda m: m["model"]["loop"]["times"].pop(), "one time per step"),
                          (lambda m: m["model"]["loop"].update(step="denoise"), "graph.*'denoise'"),
                          (lambda m: m["model"]["loop"].pop("carry"), "must be a mapping with"),
                          (lambda m: m["model"]["loop"]["carry"].update(prefix_pad="pad"),
                           "carry names prefix outputs")]:
        dst = Path(shutil.copytree(src, tmp_path / f"art-{len(list(tmp_path.iterdir()))}"))
        manifest = json.loads((dst / "artifact.json").read_text())
        edit(manifest)
        (dst / "artifact.json").write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=f"artifact.json: model.loop.*{message}"):
            OnnxRuntimePolicy(dst)


def test_denoise_steps_are_honoured_through_the_cli(tmp_path):
    """A 10-step checkpoint compressed to 4 steps by the denoise-steps pass, saved, then
    `vla-compress export CKPT -f onnx -p fp32`: the artifact records and runs 4 Euler steps, and
    matches the 4-step torch model."""
    from vla_compress.cli.main import main
    from vla_compress.models import load_vla
    from vla_compress.models.pi0.fixtures import write_tiny_pi0
    from vla_compress.passes import apply_passes
    from vla_compress.passes.denoise import DenoiseStepsConfig
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    vla = load_vla(write_tiny_pi0(tmp_path / "ten", seed=2, dtype="float32", num_inference_steps=10))
    apply_passes(vla, [DenoiseStepsConfig(steps=4)])
    ckpt = vla.save_pretrained(tmp_path / "four")
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", str(ckpt), "-f", "onnx", "-p", "fp32", "--out", str(out),
                                       "--samples", "3"])
    assert result.exit_code == 0, result.output
    art = Artifact.load(out)
    loop = art.manifest["model"]["loop"]
    assert art.status == "ok" and art.manifest["parity"]["max_abs"] < 1e-4
    assert art.manifest["model"]["integration_steps"] == loop["steps"] == 4 and loop["times"] == [1.0, 0.75, 0.5, 0.25]
    policy = OnnxRuntimePolicy(out)
    calls = []
    step = policy.graphs.sessions["denoise_step"]
    run = step.run
    step.run = lambda names, feeds: calls.append(float(feeds["t"][0])) or run(names, feeds)
    obs = make_obs(40)
    feeds = policy.processor([obs])
    got = policy.graphs.predict(feeds)["actions"]
    assert calls == [1.0, 0.75, 0.5, 0.25]
    reloaded = load_vla(ckpt)
    assert np.abs(got - torch_chunks(reloaded, [obs], feeds["noise"])).max() < 1e-4


def test_openvino_runs_the_same_loop(short_models, onnx_artifacts, observations, tmp_path):
    pytest.importorskip("openvino")
    from vla_compress.export.openvino import OpenVinoExportConfig

    vla = short_models["pi05"]
    art = export(vla, OpenVinoExportConfig(), tmp_path / "ov", base=onnx_artifacts["pi05", "fp32"])
    report = validate(art, vla, observations)
    assert report.passed and report.max_abs < 1e-4, report.failures
    assert set(art.manifest["graphs"]) == {"prefix", "denoise_step"}


@pytest.mark.parametrize("kind, precision", [("pi0", "fp16"), ("pi05", "fp16"), ("pi0", "int8")])
def test_tensorrt_artifact_is_an_engine_per_graph(short_models, observations, kind, precision, tmp_path):
    """No TensorRT here: both graphs are checked op by op against TensorRT's ONNX support (int8: with
    symmetric Q/DQ calibrated on the fp32 loop, denoise_step on its own inputs), the keys/values axis
    gets its profile range from the prefix graph's output, and the graphs TensorRT would build pass
    parity in ONNX Runtime (status unvalidated: no engine was checked)."""
    from vla_compress.export.tensorrt import TensorRTExportConfig

    vla = short_models[kind]
    art = export(vla, TensorRTExportConfig(precision=precision, build_engine="never"), tmp_path / precision,
                 example=observations[:2], calibration=observations)
    validate(art, vla, observations[:2])
    m = art.manifest
    for graph in ("prefix", "denoise_step"):
        ready = m["readiness"][graph]
        assert ready["ok"] and not ready["problems"], (graph, ready)
        assert m["graphs"][graph]["engine"] == f"{graph}.engine"
        assert (ready["qdq"].get("int8", 0) > 0) == (precision == "int8"), graph
    # the time embedding's float64 (LeRobot's) is computed in float32 by TensorRT: said, not refused
    assert any("float64" in w for w in m["readiness"]["denoise_step"]["warnings"])
    length = 2 * 4 + (12 if kind == "pi0" else 64)
    assert m["profiles"]["axes"]["prefix"] == [length] * 3
    assert m["profiles"]["graphs"]["denoise_step"]["past_key_values.0.key"]["max"] == [8, length, 1, 16]
    assert m["status"] == "unvalidated" and m["graph_parity"]["passed"]


def test_gguf_is_refused_with_the_reason(short_models, tmp_path):
    from vla_compress.export.gguf import GgufExportConfig

    with pytest.raises(ConfigError, match="GGUF export does not support model family 'pi0' .*joint attention"):
        export(short_models["pi0"], GgufExportConfig(), tmp_path / "gguf")
