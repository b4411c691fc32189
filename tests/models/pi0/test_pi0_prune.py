"""layer-drop and width-prune on π0 / π0.5: backbone and expert layers dropped together (aligned),
query heads and MLP channels of every stack, KV heads refused, exact parameter reductions, the
recorded sizes in config.json, and bit-identical save/reload of the pruned model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.models.pi0 import Pi0
from vla_compress.passes import apply_passes
from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
from vla_compress.passes.prune.layout import family_stacks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_models() -> dict:
    return {k: Pi0.tiny(seed=0, kind=k) for k in ("pi0", "pi05")}


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def outputs_round_trip(vla, tmp_path) -> torch.Tensor:
    x = vla.preprocess([vla.dummy_observation(), vla.dummy_observation("open the drawer")])
    x["noise"] = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vla.predict_chunk(dict(x))
        again = Pi0.from_pretrained(vla.save_pretrained(tmp_path / "pruned")).predict_chunk(dict(x))
    assert torch.isfinite(before).all() and torch.equal(before, again)
    return before


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_layer_drop_removes_backbone_and_expert_layers_together(tiny_models, kind, tmp_path):
    vla = copy.deepcopy(tiny_models[kind])
    backbone, expert = list(vla.backbone.layers), list(vla.action_head.expert.layers)
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=1)], context_for(vla))
    d = vla.compression_log[-1]["details"]["backbone"]
    (i,) = d["dropped"]
    assert d["dropped_with"] == {"action_head": [i]}
    assert n_params(vla) == before - n_params(backbone[i]) - n_params(expert[i])
    assert list(vla.action_head.expert.layers) == [expert[1 - i]] and list(vla.backbone.layers) == [backbone[1 - i]]
    assert vla.arch.backbone.depth == vla.arch.expert.depth == 1
    outputs_round_trip(vla, tmp_path)
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())["vla_compress"]["architecture"]
    assert saved["paligemma"]["depth"] == saved["action_expert"]["depth"] == 1


def test_expert_layers_alone_and_kv_heads_are_refused(tiny_models):
    vla = copy.deepcopy(tiny_models["pi0"])
    with pytest.raises(PassError, match="only together with the backbone layers"):
        apply_passes(vla, [LayerDropConfig(num_layers=1, where="action_head")], context_for(vla))
    with pytest.raises(PassError, match="KV heads cannot be removed"):
        apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, gqa="kv_groups")], context_for(vla))


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
@pytest.mark.parametrize("where, want", [
    ("backbone", [(1, 1, 64), (2, 1, 128)]),  # the last backbone layer only makes keys/values: not pruned
    ("action_head", [(1, 1, 32), (1, 1, 32)]),
    ("vision_encoder", [(1, 1, 48), (1, 1, 48)]),
])
def test_width_prune_every_stack(tiny_models, kind, where, want, tmp_path):
    vla = copy.deepcopy(tiny_models[kind])
    before = n_params(vla)
    mlp = 0.25 if where == "vision_encoder" else 0.5
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=mlp, gqa="query_heads", where=where)],
                 context_for(vla))
    stack = next(s for s in family_stacks(vla) if s.name == where)
    assert stack.sizes() == want
    assert n_params(vla) < before
    assert vla.cfg.raw["vla_compress"]["layer_sizes"][where] == [list(s) for s in want]
    outputs_round_trip(vla, tmp_path)


def test_pruning_passes_compose_and_reload(tiny_models, tmp_path):
    vla = copy.deepcopy(tiny_models["pi05"])
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, heads_ratio=0.5, where="vision_encoder"),
                       LayerDropConfig(num_layers=1),
                       WidthPruneConfig(mlp_ratio=0.5, heads_ratio=0.5, gqa="query_heads", where="action_head")],
                 context_for(vla))
    assert [e["pass"] for e in vla.compression_log] == ["width-prune", "layer-drop", "width-prune"]
    outputs_round_trip(vla, tmp_path)
    assert Pi0.from_pretrained(tmp_path / "pruned").compression_log == vla.compression_log
