"""FLOP and weight-byte counting of one policy step, per component."""

from __future__ import annotations

import pytest
import torch

from vla_compress.profile.counting import count_policy_step, dummy_observation, param_bytes


@pytest.fixture(scope="module")
def counts(tiny_models):
    return {head: count_policy_step(m) for head, m in tiny_models.items()}


def test_totals_positive(counts, tiny_models):
    for head, c in counts.items():
        assert c.flops > 0 and c.weight_bytes > 0
        assert c.params == sum(p.numel() for p in tiny_models[head].parameters())
        assert set(c.per_component) == set(tiny_models[head].components())
        for name, comp in c.per_component.items():
            assert comp["param_bytes"] > 0 and comp["params"] > 0, name
            assert comp["flops"] >= 0
        assert sum(comp["flops"] for comp in c.per_component.values()) <= c.flops
        assert c.to_dict()["per_component"] is c.per_component


def test_calls_per_component(counts, tiny_models):
    reg = counts["regression"].per_component
    assert {n: v["calls"] for n, v in reg.items()} == {
        "vision_encoder": 1, "projector": 1, "backbone": 1, "action_head": 1, "proprio_projector": 1}
    tok = counts["tokens"].per_component
    n_tokens = tiny_models["tokens"].cfg.chunk_size * tiny_models["tokens"].cfg.action_dim
    assert tok["backbone"]["calls"] == n_tokens == 8
    assert tok["action_head"]["calls"] == n_tokens
    assert tok["vision_encoder"]["calls"] == 1
    assert tok["action_head"]["flops"] > 0


def test_weight_bytes_follow_calls(counts, tiny_models):
    tok_model = tiny_models["tokens"]
    tok = counts["tokens"].per_component
    streamed = param_bytes(tok_model.backbone, read_only=True)
    # the embedding table is gathered, not streamed, each time the backbone runs
    assert streamed == param_bytes(tok_model.backbone) - tok_model.backbone.embed_tokens.weight.numel() * 4
    assert tok["backbone"]["weight_bytes_read"] == 8 * streamed
    assert counts["tokens"].weight_bytes == sum(v["weight_bytes_read"] for v in tok.values())


def test_backbone_flops_match_linear_layers(counts, tiny_models):
    """Regression head: one pass over T tokens costs 2*T*(linear weights) plus attention."""
    m = tiny_models["regression"]
    t = m.token_counts().prefill + m.cfg.action_tokens  # BOS, visual, prompt, proprio + action queries
    linear = sum(mod.weight.numel() for mod in m.backbone.modules() if isinstance(mod, torch.nn.Linear))
    b = m.cfg.backbone
    attention = 2 * 2 * t * t * b.hidden_size * b.num_layers  # QK^T and AV
    flops = counts["regression"].per_component["backbone"]["flops"]
    assert 2 * t * linear <= flops <= 2 * t * linear + attention


def test_dummy_observation_matches_model(tiny_models):
    obs = dummy_observation(tiny_models["tokens"], "open the door")
    assert obs["images"]["corner"].shape == (32, 32, 3) and obs["state"].shape == (4,)
    assert obs["instruction"] == "open the door"
