"""GGUF export of the OpenVLA family's Llama (llama.cpp) with vision/projector/embeddings (and OFT's
L1 head) in ONNX, through `vla-compress export -f gguf`; the hybrid policies against torch. OFT's
backbone runs bidirectionally in llama.cpp (its parallel decoding)."""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (./install.sh builds it; VLA_COMPRESS_NO_GGUF=1 skips it)")
pytestmark = pytest.mark.gguf


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The tiny OpenVLA checkpoint exported by the command at f32 and q8_0 (6 validation observations).
    The gate is the logits' cosine (-t min_cosine=0.98): a random model's near-tie tokens flip under
    q8_0 to arbitrary bins (as in test_onnx_openvla.py); f32 tightness is asserted on the numbers."""
    from click.testing import CliRunner

    from vla_compress.cli.main import main
    from vla_compress.models.openvla.fixtures import write_tiny_openvla

    root = tmp_path_factory.mktemp("openvla-gguf")
    ckpt = write_tiny_openvla(root / "tiny-openvla", seed=0, settings={"unnorm_key": "bridge_orig"})
    result = CliRunner().invoke(main, ["export", str(ckpt), "-f", "gguf", "-p", "f32", "-p", "q8_0",
                                       "--out", str(root / "gguf"), "--samples", "6", "--calibration-samples", "2",
                                       "-t", "min_cosine=0.98"])
    return {"ckpt": ckpt, "result": result, "out": root / "gguf"}


def test_gguf_export_and_parity(exported):
    from vla_compress.export import Artifact

    assert exported["result"].exit_code == 0, exported["result"].output
    f32 = Artifact.load(exported["out"] / "gguf-f32")
    p = f32.manifest["parity"]
    assert f32.status == "ok" and p["max_abs"] < 1e-4 and p["token_match"] == 1.0 and p["action_l1_max"] < 1e-6
    assert set(f32.manifest["graphs"]) == {"embed"} and f32.manifest["llama_cpp"]["output"] == "logits"
    g = f32.manifest["gguf"]
    assert g["tied_output"] is False and g["hparams"]["vocab_size"] == 576  # 513 tokenizer ids padded to 576
    q8 = Artifact.load(exported["out"] / "gguf-q8_0")
    assert q8.status == "ok" and q8.manifest["parity"]["cosine"] > 0.99 and q8.manifest["parity"]["token_match"] > 0
    assert q8.manifest["gguf"]["tensor_types"].get("Q8_0", 0) > 0


def test_llamacpp_policy_acts_like_torch(exported):
    from vla_compress.models import load_vla
    from vla_compress.runtime.llamacpp_policy import LlamaCppPolicy

    vla = load_vla(exported["ckpt"])
    policy = LlamaCppPolicy(exported["out"] / "gguf-f32")
    rng = np.random.default_rng(4)
    for text in ("open the drawer", "put both the alphabet soup and the tomato sauce in the basket"):
        obs = {"images": {"primary": rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)}, "instruction": text}
        a, b = policy.infer(obs), vla.act(obs)
        assert a.shape == b.shape == (1, 7) and np.allclose(a, b, atol=1e-4), np.abs(a - b).max()
    assert {"embed", "prefill", "decode"} <= set(policy.component_latencies_s)
    policy.graphs.close()


def test_oft_gguf_runs_bidirectionally_and_acts_like_torch(tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig
    from vla_compress.models.openvla import OpenVLAOFT
    from vla_compress.runtime.llamacpp_policy import LlamaCppPolicy

    vla = OpenVLAOFT.tiny(seed=1)
    obs = [vla.dummy_observation(t) for t in ("open the drawer", "put the bowl on the plate", "push the button")]
    rng = np.random.default_rng(2)
    for o in obs:
        o["images"] = {c: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for c in o["images"]}
        o["state"] = rng.uniform(-1, 1, 8).astype(np.float32)
    art = export(vla, GgufExportConfig(precision="f32"), tmp_path / "f32", example=obs[:2])
    m = art.manifest
    assert set(m["graphs"]) == {"embed", "action_head"} and m["gguf"]["tied_output"] is True  # no LM head
    assert m["llama_cpp"]["attention"] == "bidirectional" and m["llama_cpp"]["output"] == "hidden_states"
    report = validate(art, vla, obs)
    assert report.passed and report.max_abs < 1e-4, report.summary()
    policy = LlamaCppPolicy(art.path)
    a, b = policy.infer(obs[0]), vla.act(obs[0])
    assert a.shape == b.shape == (8, 7) and np.allclose(a, b, atol=1e-4), np.abs(a - b).max()
    assert {"embed", "backbone", "action_head"} <= set(policy.component_latencies_s)
    policy.graphs.close()
