"""The reference family behind the adapter contract: shapes, specs, token counts, padding, persistence."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vla_compress.models import detect_family, load_vla
from vla_compress.models.base import ActionSpec, TokenCounts
from vla_compress.models.reference import ReferenceConfig, ReferenceVLA

SHORT = "reach"
LONG = "reach to the target location and then press the big red button twice"


# --- identity and shapes ----------------------------------------------------------------------

def test_action_spec_fields(tiny_models):
    reg, tok = tiny_models["regression"], tiny_models["tokens"]
    assert reg.action_spec == ActionSpec(dim=4, chunk_size=2, head="regression")
    assert tok.action_spec == ActionSpec(dim=4, chunk_size=2, head="tokens", n_bins=256, tokens_per_step=8)
    assert tok.action_spec.to_dict()["tokens_per_step"] == tok.cfg.chunk_size * tok.cfg.action_dim


def test_token_counts(tiny_model):
    counts = tiny_model.token_counts(SHORT)
    assert isinstance(counts, TokenCounts)
    # 32x32 image, 8x8 patches -> 16 visual tokens (no merge in the tiny config)
    assert counts.visual == 16
    assert counts.text == 1 + len(tiny_model.processor.prompt_ids(SHORT))  # BOS + prompt
    assert counts.proprio == 1
    assert counts.action == (8 if tiny_model.cfg.head == "tokens" else 2)
    assert counts.prefill == counts.visual + counts.text + counts.proprio
    assert counts.to_dict()["prefill"] == counts.prefill
    assert tiny_model.token_counts(LONG).text > counts.text


def test_components_are_named(tiny_model):
    comps = tiny_model.components()
    assert list(comps) == ["vision_encoder", "projector", "backbone", "action_head", "proprio_projector"]
    assert all(isinstance(m, torch.nn.Module) for m in comps.values())


def test_act_returns_chunk_in_robot_units(tiny_model, make_obs):
    chunk = tiny_model.act(make_obs(0))
    spec = tiny_model.action_spec
    assert isinstance(chunk, np.ndarray) and chunk.dtype == np.float32
    assert chunk.shape == (spec.chunk_size, spec.dim)
    assert np.isfinite(chunk).all()
    # act = unnormalize(predict_chunk(preprocess)): the statistics are applied exactly once
    with torch.inference_mode():
        normed = tiny_model.predict_chunk(tiny_model.preprocess([make_obs(0)]))[0].numpy()
    assert np.array_equal(chunk, tiny_model.action_norm.unnormalize(normed))


def test_tokens_head_actions_stay_within_statistics(tiny_models, make_obs):
    model = tiny_models["tokens"]
    norm = model.action_norm
    chunk = model.act(make_obs(5))
    m = norm.mask
    # bin centres lie strictly inside [-1, 1], so normalised dims land inside [q01, q99] ...
    assert ((chunk[:, m] > norm.low[m]) & (chunk[:, m] < norm.high[m])).all()
    # ... and the unnormalised (gripper) dim is passed through as the raw bin centre
    assert (np.abs(chunk[:, ~m]) < 1).all()


def test_predict_chunk_batch_shape(tiny_model, make_obs):
    inputs = tiny_model.preprocess([make_obs(0), make_obs(1, LONG)])
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert inputs["state"].shape == (2, 4)
    with torch.inference_mode():
        out = tiny_model.predict_chunk(inputs)
    assert out.shape == (2, tiny_model.cfg.chunk_size, tiny_model.cfg.action_dim)


def test_tokens_head_decodes_exactly_chunk_times_dim_tokens(tiny_models, make_obs):
    model = tiny_models["tokens"]
    inputs = model.preprocess([make_obs(0)])
    calls = []
    hook = model.backbone.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        bins = model.generate_action_tokens(inputs["pixel_values"], inputs["text_ids"], inputs["text_mask"], inputs["state"])
    finally:
        hook.remove()
    n = model.cfg.chunk_size * model.cfg.action_dim
    assert bins.shape == (1, n)
    assert len(calls) == n  # one prefill that yields the first token, then n-1 single-token steps
    assert ((bins >= 0) & (bins < model.cfg.n_bins)).all()
    # bins decode to bin centres in [-1, 1] and back to the same bins
    actions = model.bins_to_actions(bins)
    assert actions.shape == (1, model.cfg.chunk_size, model.cfg.action_dim)
    assert torch.equal(model.actions_to_bins(actions), bins)


def test_bins_round_trip_edges(tiny_models):
    model = tiny_models["tokens"]
    a = torch.tensor([[[-1.0, -0.999, 0.0, 1.0]]])
    bins = model.actions_to_bins(a)
    assert bins.tolist() == [[0, 0, 128, 255]]
    centres = model.bins_to_actions(bins.repeat(1, 2)[:, :8])
    assert (centres.abs() < 1).all()


def test_regression_padding_invariance(tiny_models, make_obs):
    """A row padded to a longer instruction in its batch computes what it computes alone."""
    model = tiny_models["regression"]
    a, b = make_obs(0, SHORT), make_obs(1, LONG)
    batch_inputs = model.preprocess([a, b])
    mask = batch_inputs["text_mask"]
    assert mask[0].sum() < mask[1].sum()  # the short row really is padded
    with torch.inference_mode():
        both = model.predict_chunk(batch_inputs)
        alone_a = model.predict_chunk(model.preprocess([a]))[0]
        alone_b = model.predict_chunk(model.preprocess([b]))[0]
    torch.testing.assert_close(both[0], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], alone_b, atol=1e-5, rtol=0)


def test_same_seed_same_weights_different_seed_differs():
    a, b, c = ReferenceVLA.tiny(3), ReferenceVLA.tiny(3), ReferenceVLA.tiny(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# --- persistence ------------------------------------------------------------------------------

def test_save_load_round_trip_is_bit_identical(tiny_model, make_obs, tmp_path):
    path = tiny_model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "dataset_statistics.json", "model.safetensors", "tokenizer.json", "training.json"]
    loaded = ReferenceVLA.from_pretrained(path)
    assert not loaded.training
    for seed, instruction in [(0, SHORT), (1, LONG)]:
        obs = make_obs(seed, instruction)
        expected, got = tiny_model.act(obs), loaded.act(obs)
        assert np.array_equal(expected, got)
    inputs = tiny_model.preprocess([make_obs(2, SHORT), make_obs(3, LONG)])
    with torch.inference_mode():
        assert torch.equal(tiny_model.predict_chunk(inputs), loaded.predict_chunk(inputs))
    own, other = tiny_model.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)


def test_round_trip_config_tokenizer_statistics(tiny_model, tmp_path):
    loaded = ReferenceVLA.from_pretrained(tiny_model.save_pretrained(tmp_path / "ckpt"))
    assert loaded.cfg == tiny_model.cfg
    assert loaded.tokenizer.tok.to_str() == tiny_model.tokenizer.tok.to_str()
    assert loaded.tokenizer.vocab_size == tiny_model.tokenizer.vocab_size == loaded.cfg.backbone.vocab_size
    for name in ("action_norm", "state_norm"):
        a, b = getattr(tiny_model, name), getattr(loaded, name)
        assert np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high) and np.array_equal(a.mask, b.mask)
    assert loaded.dataset_name == tiny_model.dataset_name
    assert loaded.training_info == tiny_model.training_info


def test_config_json_contents(tiny_checkpoints):
    cfg = json.loads((tiny_checkpoints["tokens"] / "config.json").read_text())
    assert cfg["model_type"] == "vla-compress-reference"
    assert cfg["format_version"] == 1
    assert cfg["head"] == "tokens"
    stats = json.loads((tiny_checkpoints["tokens"] / "dataset_statistics.json").read_text())
    (entry,) = stats.values()
    assert set(entry) == {"action", "proprio"}
    assert entry["action"]["mask"] == [True, True, True, False]


def test_load_vla_detects_reference_family(tiny_checkpoints, make_obs):
    for head, path in tiny_checkpoints.items():
        assert detect_family(path) == "reference"
        vla = load_vla(path)
        assert isinstance(vla, ReferenceVLA) and vla.cfg.head == head


def test_unknown_model_type_is_rejected(tiny_checkpoints, tmp_path):
    from vla_compress.errors import CheckpointError

    path = tmp_path / "other"
    shutil.copytree(tiny_checkpoints["regression"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "not-a-vla-family"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unrecognised model") as e:
        detect_family(path)
    assert e.value.path == path / "config.json"


# --- configuration ----------------------------------------------------------------------------

def test_config_dict_round_trip(tiny_models):
    cfg = tiny_models["tokens"].cfg
    assert ReferenceConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("change, message", [
    ({"head": "diffusion"}, "head must be"),
    ({"chunk_size": 0}, ">= 1"),
    ({"token_merge": 3}, "token_merge"),
    ({"format_version": 99}, "newer"),
    ({"model_type": "llama"}, "model_type"),
    ({"vision": {"image_size": 30, "patch_size": 8}}, "multiple of"),
    ({"backbone": {"num_heads": 4, "num_kv_heads": 3}}, "num_kv_heads"),
    ({"vision": {"not_a_field": 1}}, "bad vision/backbone"),
])
def test_config_validation(tiny_models, change, message):
    from vla_compress.errors import ConfigError

    d = tiny_models["regression"].cfg.to_dict()
    for k, v in change.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match=message):
        ReferenceConfig.from_dict(d)
