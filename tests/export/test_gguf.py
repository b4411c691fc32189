"""GGUF export + the llama.cpp hybrid runtime on tiny random reference models (both heads).

The tiny backbones here are 256 wide with a 512-wide MLP, so every weight row is a multiple of
256 and llama.cpp can K-quantize all of them (q4_k_m without fallback); one test uses the
64-wide default tiny model to show the per-tensor fallback being recorded.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from vla_compress.errors import ConfigError, ExportError

from .conftest import observation

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (./install.sh builds it; VLA_COMPRESS_NO_GGUF=1 skips it)")
pytestmark = pytest.mark.gguf

HEADS = ("regression", "tokens")


def _model(head: str, width: int = 256, seed: int = 0):
    from vla_compress.models.base import Normalizer
    from vla_compress.models.reference import ReferenceVLA
    from vla_compress.models.reference.configuration_reference import BackboneConfig, ReferenceConfig, VisionConfig

    cfg = ReferenceConfig(
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
        backbone=BackboneConfig(hidden_size=width, intermediate_size=2 * width, num_layers=2, num_heads=4,
                                num_kv_heads=2),
        head=head, chunk_size=2, preset="tiny-gguf",
    )
    action_norm = Normalizer(np.array([-0.5, -1.0, -2.0, -1.0]), np.array([0.5, 1.0, 2.0, 1.0]),
                             mask=np.array([True, True, True, False]))
    state_norm = Normalizer(np.array([-0.3, 0.4, 0.0, 0.0]), np.array([0.3, 0.9, 0.3, 1.0]))
    return ReferenceVLA.build(cfg, seed=seed, action_norm=action_norm, state_norm=state_norm)


@pytest.fixture(scope="module")
def models() -> dict:
    return {head: _model(head) for head in HEADS}


@pytest.fixture(scope="module")
def obs() -> list[dict]:
    return [observation(i) for i in range(4)]


@pytest.fixture(scope="module")
def artifacts(models, obs, tmp_path_factory) -> dict:
    """(head, precision) -> validated artifact, exported once per module (shared: copy before editing)."""
    from vla_compress.export import Tolerance, export, validate
    from vla_compress.export.gguf import GgufExportConfig

    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for head in HEADS:
        for precision in ("f32", "q4_k_m"):
            # a random tokens model's near-tied logits flip under 4-bit weights (see export/gguf/config.py):
            # gate it on the logits, not on the actions of flipped tokens
            tol = Tolerance(min_cosine=0.98) if (head, precision) == ("tokens", "q4_k_m") else None
            art = export(models[head], GgufExportConfig(precision=precision, tolerance=tol),
                         root / f"{head}-{precision}", example=obs[:2])
            validate(art, models[head], obs)
            out[head, precision] = art
    return out


@pytest.mark.parametrize("head", HEADS)
def test_f32_matches_torch_tightly(artifacts, head):
    p = artifacts[head, "f32"].manifest["parity"]
    assert artifacts[head, "f32"].status == "ok" and p["passed"], p["failures"]
    assert p["n_observations"] == 4
    assert p["max_abs"] < 1e-4 and p["cosine"] > 0.99999 and p["action_l1_max"] < 1e-4
    if head == "tokens":
        assert p["token_match"] == 1.0 and p["token_match_teacher_forced"] == 1.0


@pytest.mark.parametrize("head", HEADS)
def test_q4_k_m_is_k_quantized_and_passes(artifacts, head):
    art = artifacts[head, "q4_k_m"]
    g = art.manifest["gguf"]
    assert art.status == "ok", art.manifest["parity"]["failures"]
    assert g["k_quant_fallback"] == {}
    assert g["tensor_types"].get("Q4_K", 0) > 0 and set(g["tensor_types"]) <= {"F32", "Q4_K", "Q5_K", "Q6_K"}
    assert all(t == "F32" for n, t in g["by_tensor"].items() if n.endswith("norm.weight"))
    p = art.manifest["parity"]
    assert 0.98 < p["cosine"] < 0.9999 and p["max_abs"] > 1e-3  # quantized: close, not identical
    if head == "regression":
        assert p["action_l1_mean"] < 0.08


def test_manifest_and_files(artifacts):
    reg, tok = artifacts["regression", "f32"], artifacts["tokens", "f32"]
    assert set(reg.files) == {"backbone.gguf", "embed.onnx", "action_head.onnx", "config.json", "tokenizer.json",
                              "dataset_statistics.json"}
    assert set(tok.files) == {"backbone.gguf", "embed.onnx", "config.json", "tokenizer.json",
                              "dataset_statistics.json"}
    reg.verify_files()
    g = reg.manifest["gguf"]
    assert g["tied_output"] is True and "output.weight" not in g["by_tensor"]
    assert tok.manifest["gguf"]["tied_output"] is False and "output.weight" in tok.manifest["gguf"]["by_tensor"]
    assert g["hparams"]["hidden"] == 256 and g["hparams"]["n_kv_heads"] == 2 and g["tokenizer"] == "gpt2"
    assert reg.manifest["llama_cpp"] == {"n_ctx": 512, "kv_cache": "f32", "flash_attn": "off", "hidden": 256,
                                         "output": "hidden_states", "attention": "causal"}
    assert tok.manifest["llama_cpp"]["output"] == "logits"
    assert artifacts["tokens", "q4_k_m"].manifest["llama_cpp"]["kv_cache"] == "f16"
    assert artifacts["tokens", "q4_k_m"].manifest["llama_cpp"]["flash_attn"] == "auto"
    assert [v["name"] for v in reg.manifest["io"]["embed"]["outputs"]] == ["inputs_embeds", "attention_mask"]
    assert [v["name"] for v in reg.manifest["io"]["action_head"]["inputs"]] == ["hidden"]
    assert "llama-cpp-python" in reg.manifest["versions"] and "gguf" in reg.manifest["versions"]


def test_gguf_metadata_is_what_llama_cpp_expects(artifacts):
    from gguf import GGUFReader

    r = GGUFReader(str(artifacts["tokens", "f32"].path / "backbone.gguf"))

    def field(name):
        f = r.fields[name]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]

    assert field("general.architecture") == "llama"
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.rope.dimension_count") == 64 and field("llama.context_length") == 512
    assert field("tokenizer.ggml.model") == "gpt2" and len(field("tokenizer.ggml.tokens")) == 740
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names


def test_llama_cpp_tokenizes_prompts_like_the_processor(artifacts, models):
    """The GGUF vocabulary (tokens, merges, types) is the real tokenizer: llama.cpp's own BPE
    tokenization of a prompt gives the ids the processor gives."""
    import ctypes

    from vla_compress.runtime.llamacpp_engine import LlamaBackbone

    be = LlamaBackbone(artifacts["tokens", "f32"].path / "backbone.gguf", n_ctx=64)
    try:
        vocab = llama_cpp.llama_model_get_vocab(be.model)
        for text in ("In: What action should the robot take to open the door?\nOut:", "push the button"):
            want = models["tokens"].tokenizer.encode(text)
            buf = (llama_cpp.llama_token * 256)()
            n = llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 256, False, False)
            assert list(buf[:n]) == want
    finally:
        be.close()
    assert ctypes  # noqa: the buffer type above is ctypes


def test_other_precisions_validate(models, obs, tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig

    for precision in ("f16", "q8_0", "q4_0"):
        art = export(models["regression"], GgufExportConfig(precision=precision), tmp_path / precision, example=obs[:2])
        report = validate(art, models["regression"], obs)
        assert report.passed, (precision, report.failures)
        main = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[precision]
        assert art.manifest["gguf"]["by_tensor"]["blk.0.attn_q.weight"] == main


def test_k_quant_fallback_is_recorded(obs, tmp_path):
    """A 64-wide backbone cannot be K-quantized (rows < 256): llama.cpp falls back per tensor and
    the manifest says which tensors became what."""
    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig

    vla = _model("regression", width=64)
    art = export(vla, GgufExportConfig(precision="q4_k_m"), tmp_path / "q4km-64", example=obs[:2])
    fb = art.manifest["gguf"]["k_quant_fallback"]
    assert fb and "blk.0.attn_q.weight" in fb and not any(t.startswith("Q") and t.endswith("_K") for t in fb.values())
    assert validate(art, vla, obs).n_observations == 4  # it still runs


def test_perturbed_weights_fail_validation(artifacts, models, obs, tmp_path):
    """Swap in a GGUF written from perturbed backbone weights: validation marks the artifact failed
    and the runtime then refuses it."""
    import copy

    import torch

    from vla_compress.export import Artifact, validate
    from vla_compress.export.gguf.graphs import vocab_of
    from vla_compress.export.gguf.writer import write_llama_gguf
    from vla_compress.runtime.llamacpp_policy import LlamaCppPolicy

    vla = models["regression"]
    path = tmp_path / "broken"
    shutil.copytree(artifacts["regression", "f32"].path, path)
    bad = copy.deepcopy(vla.backbone)
    with torch.no_grad():
        for p in bad.layers[1].mlp.parameters():
            p.add_(torch.randn_like(p) * 0.5 * p.std())
    write_llama_gguf(path / "backbone.gguf", bad, None, vocab_of(vla), "f32")
    art = Artifact.load(path)
    report = validate(art, vla, obs)
    assert not report.passed and art.status == "failed" and Artifact.load(path).status == "failed"
    assert any("max abs" in f for f in report.failures)
    with pytest.raises(ExportError, match="failed validation"):
        LlamaCppPolicy(path)


def test_without_rope_permutation_validation_fails(models, obs, tmp_path, monkeypatch):
    """The Q/K row permutation is what makes llama.cpp's RoPE match HF's: without it, parity fails."""
    from vla_compress.export import export, validate
    from vla_compress.export.gguf import GgufExportConfig, writer

    monkeypatch.setattr(writer, "permute_rope", lambda w, n_heads: w)
    art = export(models["regression"], GgufExportConfig(precision="f32"), tmp_path / "noperm", example=obs[:2])
    assert not validate(art, models["regression"], obs).passed


@pytest.mark.parametrize("head", HEADS)
def test_policy_acts_like_torch(artifacts, models, head):
    from vla_compress.evaluate.rollout import PolicySpec
    from vla_compress.runtime.policy import TorchPolicy

    policy = PolicySpec("llama.cpp", str(artifacts[head, "f32"].path), {"threads": 1}).build()
    torch_policy = TorchPolicy(models[head])
    for seed in range(3):
        o = observation(10 + seed)
        np.testing.assert_allclose(policy.infer(o), torch_policy.infer(o), atol=2e-3)
    assert policy.runtime == "llama.cpp" and len(policy.act(observation(0))) == 4
    d = policy.describe()
    assert d["precision"] == "f32" and d["kv_cache"] == "f32" and d["status"] == "ok"
    parts = set(policy.component_latencies_s)
    assert {"preprocess", "embed", "postprocess"} <= parts
    assert ({"backbone", "action_head"} if head == "regression" else {"prefill", "decode"}) <= parts


def test_runtime_refuses_onnx_artifacts_and_bad_options(artifacts, tmp_path):
    from vla_compress.runtime.llamacpp_policy import LlamaCppPolicy

    path = tmp_path / "not-gguf"
    shutil.copytree(artifacts["regression", "f32"].path, path)
    m = (path / "artifact.json").read_text().replace('"format": "gguf"', '"format": "onnx"')
    (path / "artifact.json").write_text(m)
    with pytest.raises(ConfigError, match="needs a GGUF artifact"):
        LlamaCppPolicy(path)
    with pytest.raises(ConfigError, match="KV-cache type"):
        LlamaCppPolicy(artifacts["regression", "f32"].path, kv_cache="q4")


def test_unsupported_configurations_are_clear(models, obs, tmp_path):
    from vla_compress.export import config_from_dict, export
    from vla_compress.export.gguf import GgufExportConfig

    with pytest.raises(ConfigError, match="unknown precision 'q3_k'"):
        GgufExportConfig(precision="q3_k")
    with pytest.raises(ConfigError, match="kv_cache"):
        GgufExportConfig(kv_cache="q8")
    assert config_from_dict({"format": "gguf", "precision": "q8_0"}) == GgufExportConfig(precision="q8_0")
    unknown = type("Unknown", (), {"family": "no-such-family"})()
    with pytest.raises(ConfigError, match="no exporter support for model family 'no-such-family'"):
        export(unknown, GgufExportConfig(), tmp_path / "unknown")
    # width pruning that leaves layers of different sizes: llama.cpp's llama architecture cannot hold it
    import torch

    vla = _model("regression", width=64)
    vla.backbone.layers[1].mlp.gate_proj = torch.nn.Linear(64, 96, bias=False)
    with pytest.raises(ConfigError, match="layers differ"):
        export(vla, GgufExportConfig(), tmp_path / "pruned", example=obs[:2])
    assert not (tmp_path / "pruned").exists()


def test_openvla_llama_goes_through_the_same_writer(tmp_path):
    """OpenVLA's Llama (with its LM head and padded vocabulary) written by the same code path runs
    in llama.cpp with the logits torch gives (the full OpenVLA / OFT artifacts: test_gguf_openvla.py)."""
    import torch

    from vla_compress.export.gguf.writer import vocab_from_tokenizer, write_llama_gguf
    from vla_compress.models.openvla import OpenVLA
    from vla_compress.runtime.llamacpp_engine import LlamaBackbone

    vla = OpenVLA.tiny()
    lm, tok = vla.language_model, vla.tokenizer
    vocab = vocab_from_tokenizer(tok.tok, tok.bos_id, tok.eos_id)
    info = write_llama_gguf(tmp_path / "openvla.gguf", lm.model, lm.lm_head.weight, vocab, "f32")
    assert info["tokenizer"] == "llama" and info["hparams"]["vocab_size"] == lm.config.vocab_size
    ids = [tok.bos_id, *tok.prompt_ids("put the carrot in the pot")]
    with torch.inference_mode():
        want = lm(torch.tensor([ids])).logits[0].float().numpy()
    be = LlamaBackbone(tmp_path / "openvla.gguf", n_ctx=64, kv_cache="f32", flash_attn="off")
    try:
        got = []
        for t in ids:
            be.decode_token(t)
            got.append(be.logits())
    finally:
        be.close()
    np.testing.assert_allclose(np.stack(got), want, atol=1e-3)


def test_validate_without_llama_cpp_is_an_error_not_a_verdict(artifacts, models, obs, tmp_path, monkeypatch):
    """A machine without llama.cpp cannot judge an artifact: validate raises and leaves the status alone."""
    import sys

    from vla_compress.export import Artifact, validate

    path = tmp_path / "copy"
    shutil.copytree(artifacts["regression", "f32"].path, path)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(ExportError, match="llama-cpp-python is not installed"):
        validate(Artifact.load(path), models["regression"], obs)
    assert Artifact.load(path).status == "ok"


def test_cli_exports_gguf(models, tmp_path):
    """`vla-compress export -f gguf` on a saved checkpoint: export + validation + summary, exit 0."""
    import json

    from click.testing import CliRunner

    from vla_compress.cli.main import main
    from vla_compress.export import Artifact

    ckpt = models["tokens"].save_pretrained(tmp_path / "ckpt")
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(main, ["export", str(ckpt), "-f", "gguf", "-p", "q8_0", "--out", str(tmp_path / "out"),
                                       "--samples", "3", "--json-out", str(summary)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(summary.read_text())["artifacts"]
    art = Artifact.load(tmp_path / "out")
    assert row["precision"] == "q8_0" and row["status"] == art.status == "ok"
    assert art.manifest["source"]["checkpoint"] == str(ckpt.resolve())


def test_bidirectional_attention_matches_oft_parallel_decoding(tmp_path):
    """OpenVLA-OFT decodes its action placeholders with full bidirectional attention over the
    sequence; llama.cpp's non-causal mode (llama_set_causal_attn) computes exactly that, and
    causal mode does not."""
    import torch

    from vla_compress.export.gguf.writer import vocab_from_tokenizer, write_llama_gguf
    from vla_compress.models.openvla import OpenVLAOFT
    from vla_compress.runtime.llamacpp_engine import LlamaBackbone

    vla = OpenVLAOFT.tiny()
    lm, tok = vla.language_model, vla.tokenizer
    write_llama_gguf(tmp_path / "oft.gguf", lm.model, lm.lm_head.weight, vocab_from_tokenizer(tok.tok, tok.bos_id,
                                                                                               tok.eos_id), "f32")
    torch.manual_seed(0)
    x = torch.randn(1, 12, lm.config.hidden_size) * 0.5
    full = torch.ones(1, 1, 12, 12, dtype=torch.bool)  # the key-padding mask OFT passes: every row sees every token
    with torch.inference_mode():
        want = lm.model(inputs_embeds=x, attention_mask=full).last_hidden_state[0].numpy()
        causal_want = lm.model(inputs_embeds=x).last_hidden_state[0].numpy()
    got = {}
    for causal in (False, True):
        be = LlamaBackbone(tmp_path / "oft.gguf", n_ctx=64, kv_cache="f32", flash_attn="off", embeddings=True,
                           causal=causal)
        try:
            be.decode_embeddings(x[0].numpy(), n_outputs=12)
            got[causal] = np.stack([be.hidden(i) for i in range(12)])
        finally:
            be.close()
    np.testing.assert_allclose(got[False], want, atol=1e-4)
    np.testing.assert_allclose(got[True], causal_want, atol=1e-4)
    assert np.abs(got[True] - want).max() > 1e-2  # the two modes really differ on this input
