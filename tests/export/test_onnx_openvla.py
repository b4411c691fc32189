"""ONNX export of OpenVLA (prefill + decode over the whole vocabulary) and OpenVLA-OFT (one parallel-
decoding graph): fp32 / INT8 / INT4 parity against torch, the artifact's torch-free processor and
policy, the command line, and corrupted artifacts.

Quantized parity on *random* tiny models: INT4 round-to-nearest noise compounds through a random
network (measured: torch fake-quant of every Linear alone gives the tiny OFT a chunk cosine of -0.05),
so a random model cannot tell a broken INT4 export from INT4 itself. The INT4 tests therefore put
the weights on the quantizer's grid first (`on_int4_grid`): MatMulNBits then stores them exactly,
and with fp32 compute (accuracy_level=0) the INT4 artifact must match torch as tightly as fp32 —
any graph, packing or runtime mistake shows. INT8-dynamic also quantizes activations at run time,
which no weight choice removes; it is judged on logits / cosine as the reference family's random
tokens head is (tests/export/test_onnx_export.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla_compress.errors import CheckpointError, ExportError
from vla_compress.export import Artifact, Tolerance, export, validate
from vla_compress.export.onnx import OnnxExportConfig
from vla_compress.export.onnx.config import DEFAULT_TOLERANCES

FAMILIES = ("openvla", "openvla-oft")
INSTRUCTIONS = ["put the bowl on the plate", "open the drawer", "pick up the black bowl",
                "put both the alphabet soup and the tomato sauce in the basket"]


def on_int4_grid(model, block: int = 32):
    """Every Linear weight made exactly representable by ORT's symmetric 4-bit blocks (along the
    input dim, `block` wide): values k*u, k in [-8, 7], the block's largest magnitude being -8u
    (ORT's scale is that signed extreme / -8)."""
    import torch

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                out, inn = w.shape
                x = torch.nn.functional.pad(w, (0, (-inn) % block)).reshape(out, -1, block)
                u = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 8
                k = (x / u).round().clamp(-8, 7)
                k.scatter_(-1, x.abs().argmax(-1, keepdim=True), -8.0)
                w.copy_((k * u).reshape(out, -1)[:, :inn])
    return model


def observations(vla, n: int = 6, seed: int = 0) -> list[dict]:
    """Non-square frames of another size than the model's (the processor resizes), four instructions."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        obs = vla.dummy_observation(INSTRUCTIONS[i % len(INSTRUCTIONS)])
        obs["images"] = {c: rng.integers(0, 256, (50, 64, 3), dtype=np.uint8) for c in obs["images"]}
        if "state" in obs:
            obs["state"] = rng.uniform(-1.5, 1.5, obs["state"].shape).astype(np.float32)
        out.append(obs)
    return out


@pytest.fixture(scope="module")
def models() -> dict:
    from vla_compress.models.openvla import OpenVLA, OpenVLAOFT

    return {"openvla": OpenVLA.tiny(), "openvla-oft": OpenVLAOFT.tiny(seed=1)}


@pytest.fixture(scope="module")
def fp32(models, tmp_path_factory) -> dict:
    """family -> validated fp32 artifact (shared: copy before editing)."""
    root = tmp_path_factory.mktemp("openvla-onnx")
    out = {}
    for fam, vla in models.items():
        art = export(vla, OnnxExportConfig(), root / fam, example=observations(vla, 2, seed=9))
        validate(art, vla, observations(vla))
        out[fam] = Artifact.load(art.path)
    return out


@pytest.fixture(scope="module")
def cli_on_grid(models, tmp_path_factory) -> dict:
    """family -> (checkpoint with INT4-grid weights, CliRunner result, output dir) of
    `vla-compress export CKPT -f onnx -p fp32 -p int4-weight -o accuracy_level=0`."""
    import copy

    from click.testing import CliRunner

    from vla_compress.cli.main import main

    root = tmp_path_factory.mktemp("openvla-cli")
    out = {}
    for fam, vla in models.items():
        ckpt = on_int4_grid(copy.deepcopy(vla)).save_pretrained(root / f"{fam}-ckpt")
        result = CliRunner().invoke(main, ["export", str(ckpt), "-f", "onnx", "-p", "int4-weight", "-p", "fp32",
                                           "-o", "accuracy_level=0", "--out", str(root / fam), "--samples", "4",
                                           "--calibration-samples", "2"])
        out[fam] = (ckpt, result, root / fam)
    return out


# --- fp32 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_fp32_parity_is_tight(fp32, fam):
    art = fp32[fam]
    p = art.manifest["parity"]
    assert art.status == "ok" and p["passed"], p["failures"]
    assert p["max_abs"] < 1e-4 and p["cosine"] > 0.99999 and p["action_l1_max"] < 1e-4 and p["n_observations"] == 6
    if fam == "openvla":  # every greedy token identical, free-running and teacher-forced
        assert p["compared"] == "bin_logits" and p["token_match"] == 1.0 and p["token_match_teacher_forced"] == 1.0
    else:
        assert p["compared"] == "actions" and p["token_match"] is None


def test_graphs_and_processor_files(fp32, models):
    def names(m, graph, side):
        return [v["name"] for v in m["io"][graph][side]]

    m = fp32["openvla"].manifest
    kv = [f"{i}.{t}" for i in range(2) for t in ("key", "value")]
    assert set(m["graphs"]) == {"prefill", "decode"}
    assert names(m, "prefill", "inputs") == ["pixel_values", "bos_ids", "text_ids", "text_mask"]
    assert names(m, "prefill", "outputs") == ["bin_logits", "attention_mask", *[f"present.{k}" for k in kv]]
    assert names(m, "decode", "inputs") == ["token_ids", "attention_mask", "position_ids",
                                            *[f"past_key_values.{k}" for k in kv]]
    vocab = models["openvla"].cfg.llama["vocab_size"]  # greedy over the whole vocabulary, as HF generate
    assert {v["name"]: v["shape"] for v in m["io"]["decode"]["outputs"]}["bin_logits"] == ["batch", vocab]
    assert m["model"]["token_map"] == "openvla" and m["model"]["action_vocab_end"] == vocab - 64
    assert set(m["files"]) == {"prefill.onnx", "decode.onnx", "openvla_runtime.json", "tokenizer.json",
                               "special_tokens_map.json", "preprocessor_config.json", "dataset_statistics.json"}

    m = fp32["openvla-oft"].manifest
    assert set(m["graphs"]) == {"policy_step"} and names(m, "policy_step", "outputs") == ["actions"]
    assert names(m, "policy_step", "inputs") == ["pixel_values", "bos_ids", "text_ids", "text_mask", "state"]
    shapes = {v["name"]: v["shape"] for v in m["io"]["policy_step"]["inputs"]}
    assert shapes["text_ids"] == ["batch", "text"] and shapes["pixel_values"] == ["batch", 12, 42, 42]
    assert m["model"] == {"family": "openvla-oft", "chunk_size": 8, "action_dim": 7, "head": "regression",
                          "policy_head": "l1", "proprio": True, "attention": "bidirectional",
                          "action_hidden": {"count": 56, "skip_last": 2}}


# --- quantized ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_int8_dynamic_parity(fp32, models, tmp_path, fam):
    vla = models[fam]
    # random model: near-tie tokens flip (tokens head judged on its logits), activation rounding
    # compounds through the bidirectional pass (OFT: measured chunk cosine 0.98)
    tol = Tolerance(min_cosine=0.98) if fam == "openvla" else Tolerance(min_cosine=0.95)
    art = export(vla, OnnxExportConfig(precision="int8-dynamic", tolerance=tol), tmp_path / "q", base=fp32[fam])
    assert all(g["ops"].get("MatMulInteger", 0) > 0 for g in art.manifest["graphs"].values())
    report = validate(art, vla, observations(vla))
    assert report.passed and Artifact.load(art.path).status == "ok", report.summary()
    assert 0 < report.max_abs < 2.0
    if fam == "openvla":
        assert report.token_match >= 0.5 and report.token_match_teacher_forced >= 0.8


@pytest.mark.parametrize("fam", FAMILIES)
def test_int4_on_grid_weights_matches_torch_like_fp32(cli_on_grid, fam):
    ckpt, result, out = cli_on_grid[fam]
    assert result.exit_code == 0, result.output
    assert "export summary" in result.output and "int4-weight" in result.output
    for prec in ("fp32", "int4-weight"):
        art = Artifact.load(out / f"onnx-{prec}")
        p = art.manifest["parity"]
        assert art.status == "ok" and p["n_observations"] == 4, p["failures"]
        assert p["max_abs"] < 1e-4 and p["cosine"] > 0.99999 and p["action_l1_max"] < 1e-4
        if fam == "openvla":
            assert p["token_match"] == 1.0
    int4 = Artifact.load(out / "onnx-int4-weight")
    assert all(g["ops"].get("MatMulNBits", 0) > 0 for g in int4.manifest["graphs"].values())
    assert all(g["ops"].get("MatMul", 0) < g["ops"]["MatMulNBits"] for g in int4.manifest["graphs"].values())


@pytest.mark.parametrize("fam", FAMILIES)
def test_int4_default_compute_passes_the_int4_gate(cli_on_grid, tmp_path, fam):
    """The shipped INT4 setting (int8 activations inside MatMulNBits, accuracy_level=4) on the same
    on-grid weights: the default INT4 gate holds for OFT; the random tokens head's near-tie tokens
    flip under activation rounding, so it is judged on its logits (as test_int8_dynamic_parity)."""
    from vla_compress.models import load_vla

    ckpt, _, out = cli_on_grid[fam]
    vla = load_vla(ckpt)
    tol = Tolerance(min_cosine=0.98) if fam == "openvla" else DEFAULT_TOLERANCES["int4-weight"]
    art = export(vla, OnnxExportConfig(precision="int4-weight", tolerance=tol), tmp_path / "q", base=out / "onnx-fp32")
    report = validate(art, vla, observations(vla, seed=3))
    assert report.passed, report.summary()
    assert report.cosine > 0.99 and report.max_abs > 1e-6  # close, and not exact


def test_int4_on_random_weights_is_marked_failed_and_refused(fp32, models, tmp_path):
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    vla = models["openvla-oft"]
    art = export(vla, OnnxExportConfig(precision="int4-weight"), tmp_path / "q", base=fp32["openvla-oft"])
    report = validate(art, vla, observations(vla))
    assert not report.passed and Artifact.load(art.path).status == "failed"
    with pytest.raises(ExportError, match="failed validation"):
        OnnxRuntimePolicy(art.path)
    assert OnnxRuntimePolicy(art.path, allow_failed=True).infer(observations(vla, 1)[0]).shape == (8, 7)


# --- runtime --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_onnx_policy_acts_like_the_torch_policy(fp32, models, fam):
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    onnx, torch_policy = OnnxRuntimePolicy(fp32[fam].path, verify=True), TorchPolicy(models[fam])
    for obs in observations(models[fam], 3, seed=5):
        a, b = onnx.infer(obs), torch_policy.infer(obs)
        assert a.shape == b.shape == ((1, 7) if fam == "openvla" else (8, 7))
        assert np.allclose(a, b, atol=1e-4), np.abs(a - b).max()
    parts = {"preprocess", "prefill", "decode", "postprocess"} if fam == "openvla" else {"preprocess", "policy_step"}
    assert parts <= set(onnx.component_latencies_s)


def test_artifact_runtime_needs_no_torch(fp32):
    """Both artifacts load and act in a fresh interpreter without importing torch."""
    script = """
import sys
import numpy as np
from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
rng = np.random.default_rng(0)
for path, cams, state in ((sys.argv[1], ["primary"], 0), (sys.argv[2], ["primary", "wrist"], 8)):
    obs = {"images": {c: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for c in cams}, "instruction": "open it"}
    if state:
        obs["state"] = np.zeros(state, np.float32)
    print(OnnxRuntimePolicy(path).act(obs).shape)
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""
    res = subprocess.run([sys.executable, "-c", script, str(fp32["openvla"].path), str(fp32["openvla-oft"].path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["(7,)", "(7,)", "no", "torch"]


# --- corrupted artifacts ----------------------------------------------------------------------------------
def test_corrupted_artifacts_give_clear_errors(fp32, tmp_path):
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    def fresh(name: str) -> Path:
        return Path(shutil.copytree(fp32["openvla"].path, tmp_path / name))

    bad = fresh("truncated")
    data = (bad / "decode.onnx").read_bytes()
    (bad / "decode.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportError, match=r"decode\.onnx: sha256 differs"):
        OnnxRuntimePolicy(bad, verify=True)
    with pytest.raises(ExportError, match=r"decode\.onnx: ONNX Runtime cannot load this graph.*corrupt or incomplete"):
        OnnxRuntimePolicy(bad)

    bad = fresh("runtime-json")
    (bad / "openvla_runtime.json").write_text('{"unnorm_key": "bridge_orig"}')
    with pytest.raises(CheckpointError, match=r"openvla_runtime\.json: missing keys \['normalization'"):
        OnnxRuntimePolicy(bad)

    bad = fresh("unnorm-key")
    text = (bad / "openvla_runtime.json").read_text().replace('"bridge_orig"', '"no_such_dataset"')
    (bad / "openvla_runtime.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"openvla_runtime\.json: unnorm_key 'no_such_dataset'"):
        OnnxRuntimePolicy(bad)

    bad = fresh("no-tokenizer")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: file not found"):
        OnnxRuntimePolicy(bad)


def test_artifacts_are_profiled_without_their_model(fp32):
    """`vla-compress profile ARTIFACT` builds its observations from the artifact's processor."""
    from vla_compress.profile.measure import measure_policy
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    for fam, chunk, parts in (("openvla", 1, {"prefill", "decode"}), ("openvla-oft", 8, {"policy_step"})):
        m = measure_policy(OnnxRuntimePolicy(fp32[fam].path), steps=2, warmup=1)
        assert m.chunk_size == chunk and len(m.latencies_ms) == 2 and m.p50_ms > 0
        assert parts <= set(m.breakdown_ms)


def test_bfloat16_model_is_refused_before_tracing(tmp_path):
    import torch

    from vla_compress.errors import ConfigError
    from vla_compress.models.openvla import OpenVLAOFT
    from vla_compress.models.openvla.fixtures import write_tiny_openvla_oft

    vla = OpenVLAOFT.from_pretrained(write_tiny_openvla_oft(tmp_path / "ckpt", seed=1), dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="ONNX export of openvla-oft traces float32 ONNX graphs, but this "
                                          "model's weights are bfloat16"):
        export(vla, OnnxExportConfig(), tmp_path / "x", example=observations(vla, 2))
    assert not (tmp_path / "x").exists()
