"""Token reduction on π0 / π0.5: visual-token-prune ranks the visual tokens by the attention the
prompt and the expert's queries give them at one backbone layer and keeps a static set; token-merge
merges SigLIP tokens between layers (unmerged at its output). Both save and reload bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.models.pi0 import Pi0
from vla_compress.passes import apply_passes
from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_models() -> dict:
    return {k: Pi0.tiny(seed=0, kind=k) for k in ("pi0", "pi05")}


def chunk(vla) -> torch.Tensor:
    x = vla.preprocess([vla.dummy_observation(), vla.dummy_observation("open the drawer")])
    x["noise"] = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return vla.predict_chunk(x)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_visual_token_prune_keeps_a_static_set(tiny_models, kind, tmp_path):
    vla = copy.deepcopy(tiny_models[kind])
    full = chunk(vla)
    apply_passes(vla, [VisualTokenPruneConfig(keep_ratio=0.5, layer=1)], context_for(vla))
    notes = vla.compression_log[-1]["details"]
    assert notes["visual_tokens_before"] == 8 and notes["visual_tokens_after"] == 4 and len(notes["kept"]) == 4
    assert vla.token_counts().visual == 4 and 0 < notes["attention_mass_kept"] <= 1
    pruned = chunk(vla)
    assert torch.isfinite(pruned).all() and not torch.equal(pruned, full)
    loaded = Pi0.from_pretrained(vla.save_pretrained(tmp_path / "pruned"))
    assert loaded.visual_keep.tolist() == notes["kept"] and torch.equal(chunk(loaded), pruned)
    assert (tmp_path / "pruned" / "token_reduction.json").is_file()


def test_ranking_comes_from_the_calibration_data(tiny_models):
    kept = []
    for seed in (0, 1):
        vla = copy.deepcopy(tiny_models["pi0"])
        apply_passes(vla, [VisualTokenPruneConfig(keep_ratio=0.5, layer=0)], context_for(vla, seed=seed))
        kept.append(vla.compression_log[-1]["details"]["attention_mass_kept"])
    assert kept[0] != kept[1]


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_token_merge_in_siglip_round_trips(tiny_models, kind, tmp_path):
    vla = copy.deepcopy(tiny_models[kind])
    apply_passes(vla, [TokenMergeConfig(r=1)], context_for(vla))
    assert type(vla.vision_encoder.encoder).__name__ == "ToMeSiglipEncoder"
    assert vla.token_counts().visual == 8  # unmerged at the encoder's output: the prefix keeps every patch
    merged = chunk(vla)
    assert torch.isfinite(merged).all()
    loaded = Pi0.from_pretrained(vla.save_pretrained(tmp_path / "merged"))
    assert type(loaded.vision_encoder.encoder).__name__ == "ToMeSiglipEncoder" and torch.equal(chunk(loaded), merged)


def test_token_merge_reduce_is_refused(tiny_models):
    vla = copy.deepcopy(tiny_models["pi0"])
    with pytest.raises(Exception, match="'reduce' is not possible for pi0: its prefix"):
        apply_passes(vla, [TokenMergeConfig(r=1, mode="reduce")], context_for(vla))
