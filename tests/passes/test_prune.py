"""Structured pruning: real parameter/FLOP reduction, consistent configs, save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.models.reference import ReferenceVLA
from vla_compress.passes import apply_passes, quantize_
from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
from vla_compress.passes.quantize import Int8WeightOnlyConfig

HEADS = ("regression", "tokens")


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_round_trip(vla, make_obs, tmp_path):
    """save_pretrained -> from_pretrained rebuilds the same shapes and the same actions."""
    inputs = vla.preprocess([make_obs(1), make_obs(2, instruction="open the door")])
    with torch.no_grad():
        before = vla.predict_chunk(inputs)
    loaded = ReferenceVLA.from_pretrained(vla.save_pretrained(tmp_path / "pruned"))
    assert loaded.cfg == vla.cfg
    with torch.no_grad():
        assert torch.equal(loaded.predict_chunk(inputs), before)
    assert np.isfinite(loaded.act(make_obs(3))).all()


@pytest.mark.parametrize("head", HEADS)
def test_layer_drop_backbone(fresh, make_obs, tmp_path, head):
    vla = fresh(head, deep=True)
    layer_params = n_params(vla.backbone.layers[0])
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=1)], context_for(vla))
    entry = vla.compression_log[-1]
    dropped = entry["details"]["backbone"]["dropped"]
    assert len(dropped) == 1 and len(entry["details"]["backbone"]["scores"]) == 4
    assert len(vla.backbone.layers) == 3 == vla.cfg.backbone.num_layers == vla.backbone.config.num_hidden_layers
    assert n_params(vla) == before - layer_params
    assert entry["after"]["flops"] < entry["before"]["flops"]
    # the KV cache addresses layers by layer_idx: it must be 0..n-1 again (the tokens head decodes with it)
    assert [layer.self_attn.layer_idx for layer in vla.backbone.layers] == [0, 1, 2]
    assert_round_trip(vla, make_obs, tmp_path)


def test_layer_drop_angular_block_and_scope(fresh):
    vla = fresh("regression", deep=True)
    apply_passes(vla, [LayerDropConfig(num_layers=2, metric="angular")], context_for(vla))
    d = vla.compression_log[-1]["details"]["backbone"]["dropped"]
    assert len(d) == 2 and d[1] == d[0] + 1  # a contiguous block
    vla = fresh("regression", deep=True)
    apply_passes(vla, [LayerDropConfig(num_layers=1, where={"include": ["backbone.layers.3"]})], context_for(vla))
    assert vla.compression_log[-1]["details"]["backbone"]["dropped"] == [3]


def test_layer_drop_vision_encoder(fresh, make_obs, tmp_path):
    vla = fresh("tokens", deep=True)
    apply_passes(vla, [LayerDropConfig(ratio=0.34, where="vision_encoder")], context_for(vla))
    assert len(vla.vision_encoder.encoder.layers) == 2 == vla.cfg.vision.num_layers
    assert len(vla.backbone.layers) == 4
    assert_round_trip(vla, make_obs, tmp_path)


def test_layer_drop_errors(fresh):
    vla = fresh("regression")  # 2 backbone layers
    with pytest.raises(PassError, match="cannot drop 2 of backbone's 2 layers"):
        apply_passes(vla, [LayerDropConfig(num_layers=2)], context_for(vla))
    with pytest.raises(PassError, match="drops no layer"):
        apply_passes(vla, [LayerDropConfig(ratio=0.1)], context_for(vla))


@pytest.mark.parametrize("head", HEADS)
def test_width_prune_kv_groups_and_mlp(fresh, make_obs, tmp_path, head):
    vla = fresh(head)
    before = n_params(vla.backbone)
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.25)], context_for(vla))
    b = vla.cfg.backbone
    assert (b.num_heads, b.num_kv_heads, b.intermediate_size, b.head_dim) == (2, 1, 96, 16)
    for layer in vla.backbone.layers:
        a = layer.self_attn
        assert (a.q_proj.out_features, a.k_proj.out_features, a.o_proj.in_features) == (32, 16, 32)
        assert a.num_key_value_groups == 2 and layer.mlp.down_proj.in_features == 96
    # per layer: q,o lose 2 heads x 16 x 64 each; k,v lose one KV head; 3 MLP matrices lose 32 x 64
    assert before - n_params(vla.backbone) == 2 * (2 * 2 * 16 * 64 + 2 * 16 * 64 + 3 * 32 * 64)
    e = vla.compression_log[-1]
    assert e["after"]["flops"] < e["before"]["flops"]
    assert_round_trip(vla, make_obs, tmp_path)


def test_width_prune_query_heads_keeps_kv_heads(fresh, make_obs, tmp_path):
    vla = fresh("regression")
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, gqa="query_heads", importance="magnitude")])
    b = vla.cfg.backbone
    assert (b.num_heads, b.num_kv_heads) == (2, 2)
    assert all(layer.self_attn.num_key_value_groups == 1 for layer in vla.backbone.layers)
    assert_round_trip(vla, make_obs, tmp_path)


def test_width_prune_global_allocation_records_per_layer_sizes(fresh, make_obs, tmp_path):
    vla = fresh("regression")
    with torch.no_grad():  # half of layer 0's MLP channels become nearly useless
        vla.backbone.layers[0].mlp.down_proj.weight[:, :64] *= 1e-4
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.25, allocation="global", round_to=32)], context_for(vla))
    b = vla.cfg.backbone
    widths = [layer.mlp.gate_proj.out_features for layer in vla.backbone.layers]
    assert widths == [64, 128] and b.layer_intermediate_sizes == (64, 128)
    assert b.intermediate_size == 128  # the scalar keeps the unpruned base shape
    assert_round_trip(vla, make_obs, tmp_path)


def test_width_prune_scoped_to_some_layers(fresh, make_obs, tmp_path):
    vla = fresh("tokens")
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, where={"include": ["backbone.layers.1"]})],
                 context_for(vla))
    b = vla.cfg.backbone
    assert (b.layer_num_heads, b.layer_num_kv_heads, b.layer_intermediate_sizes) == ((4, 2), (2, 1), (128, 64))
    assert vla.backbone.layers[0].self_attn.q_proj.out_features == 64
    assert_round_trip(vla, make_obs, tmp_path)


def test_width_prune_vision_encoder(fresh, make_obs, tmp_path):
    vla = fresh("tokens")
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, where="vision_encoder")], context_for(vla))
    v = vla.cfg.vision
    assert (v.num_heads, v.head_dim, v.intermediate_size) == (1, 16, 32)
    for layer in vla.vision_encoder.encoder.layers:
        assert layer.self_attn.q_proj.out_features == 16 and layer.mlp.fc1.out_features == 32
    assert_round_trip(vla, make_obs, tmp_path)


def test_width_prune_errors(fresh):
    vla = fresh("regression")
    with pytest.raises(PassError, match="heads_ratio.*removes none"):
        apply_passes(vla, [WidthPruneConfig(heads_ratio=0.2)], context_for(vla))
    quantize_(vla, Int8WeightOnlyConfig(where="backbone"))
    with pytest.raises(PassError, match="before quantization"):
        apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5)], context_for(vla))


def test_per_layer_sizes_are_validated(tiny_models):
    from vla_compress.errors import ConfigError
    from vla_compress.models.reference import ReferenceConfig

    d = tiny_models["regression"].cfg.to_dict()
    with pytest.raises(ConfigError, match="backbone.layer_intermediate_sizes must list num_layers=2"):
        ReferenceConfig.from_dict({**d, "backbone": {**d["backbone"], "layer_intermediate_sizes": [64]}})
    with pytest.raises(ConfigError, match="multiple of its num_kv_heads"):
        ReferenceConfig.from_dict({**d, "backbone": {**d["backbone"], "layer_num_heads": [3, 4],
                                                     "layer_num_kv_heads": [2, 2], "head_dim": 16}})
