"""Visual-token reduction: a static attention-guided keep set, and ToMe merging in the vision encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.models.reference import ReferenceVLA
from vla_compress.passes import apply_passes
from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig
from vla_compress.nn.tome import bipartite_merge


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_visual_token_prune_static_keep_set(fresh, make_obs, tmp_path, head):
    vla = fresh(head)
    assert vla.token_counts().visual == 16
    apply_passes(vla, [VisualTokenPruneConfig(keep_ratio=0.5, layer=1)], context_for(vla))
    keep = vla.visual_keep
    assert keep.numel() == 8 and torch.equal(keep, keep.sort().values) and keep.unique().numel() == 8
    assert vla.token_counts().visual == 8 == vla.cfg.visual_token_budget
    with torch.no_grad():
        assert vla.visual_tokens(vla.preprocess([make_obs(0)])["pixel_values"]).shape[1] == 8
    e = vla.compression_log[-1]
    assert e["after"]["flops"] < e["before"]["flops"] and e["after"]["visual_tokens"] == 8
    inputs = vla.preprocess([make_obs(1)])
    loaded = ReferenceVLA.from_pretrained(vla.save_pretrained(tmp_path / "pruned"))
    assert torch.equal(loaded.visual_keep, keep) and loaded.token_counts().visual == 8
    with torch.no_grad():
        assert torch.equal(loaded.predict_chunk(inputs), vla.predict_chunk(inputs))


def test_visual_token_prune_errors(fresh):
    vla = fresh("regression")
    with pytest.raises(PassError, match="budget.*more than the 16"):
        apply_passes(vla, [VisualTokenPruneConfig(budget=20, layer=1)], context_for(vla))
    with pytest.raises(PassError, match="layer must be below"):
        apply_passes(vla, [VisualTokenPruneConfig(layer=5)], context_for(vla))


def test_bipartite_merge_merges_duplicates_exactly():
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])  # tokens 0 and 1 are identical
    size, assign = torch.ones(1, 4), torch.arange(4)[None]
    new_x, new_size, new_assign = bipartite_merge(x, x, size, assign, r=1)
    assert new_x.shape == (1, 3, 2) and new_size.sum() == 4
    assert torch.equal(new_x.gather(1, new_assign[..., None].expand(-1, -1, 2)), x)  # unmerge restores them


@pytest.mark.parametrize("head", ["regression", "tokens"])
def test_token_merge_unmerge_keeps_the_grid(fresh, make_obs, head):
    vla = fresh(head)
    apply_passes(vla, [TokenMergeConfig(r=4)])
    e = vla.compression_log[-1]
    assert e["details"]["encoder_tokens_per_layer"] == [16, 12]
    assert e["after"]["visual_tokens"] == 16
    vision_flops = [e[k]["per_component"]["vision_encoder"]["flops"] for k in ("before", "after")]
    assert vision_flops[1] < vision_flops[0]
    with torch.no_grad():
        out = vla.vision_encoder(pixel_values=vla.preprocess([make_obs(0)])["pixel_values"]).last_hidden_state
    assert out.shape == (1, 16, 32)
    assert np.isfinite(vla.act(make_obs(0))).all()
    assert set(vla.state_dict()) == set(fresh(head).state_dict())  # weights untouched, names kept


def test_token_merge_reduce_shrinks_the_backbone_sequence(fresh, make_obs):
    vla = fresh("regression")
    apply_passes(vla, [TokenMergeConfig(ratio=0.5, mode="reduce")])
    assert vla.token_counts().visual == 8
    with torch.no_grad():
        assert vla.visual_tokens(vla.preprocess([make_obs(0)])["pixel_values"]).shape[1] == 8
    assert np.isfinite(vla.act(make_obs(0))).all()
    e = vla.compression_log[-1]
    assert e["after"]["per_component"]["backbone"]["flops"] < e["before"]["per_component"]["backbone"]["flops"]


def test_token_merge_reduce_needs_the_grid_free_projector():
    vla = ReferenceVLA.tiny(head="regression", token_merge=2)
    with pytest.raises(PassError, match="token_merge=2"):
        apply_passes(vla, [TokenMergeConfig(r=2, mode="reduce")])
