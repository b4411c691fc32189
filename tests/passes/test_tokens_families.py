"""visual-token-prune and token-merge on the OpenVLA, OpenVLA-OFT and SmolVLA tiny fixtures."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from vla_compress.errors import CheckpointError, PassError
from vla_compress.passes import PassContext, apply_passes, calibration_dataset, synthetic_observations
from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig
from vla_compress.checkpoint.tokens import TOKENS_FILE

FAMILIES = ("openvla", "openvla-oft", "smolvla")


def build(family: str, **kwargs):
    from vla_compress.models.openvla.adapter import OpenVLA, OpenVLAOFT
    from vla_compress.models.smolvla.adapter import SmolVLA

    return {"openvla": OpenVLA, "openvla-oft": OpenVLAOFT, "smolvla": SmolVLA}[family].tiny(seed=0, **kwargs)


@pytest.fixture(scope="module")
def models() -> dict:
    return {f: build(f) for f in FAMILIES}


def context(vla, n: int = 3) -> PassContext:
    return PassContext(calibration=calibration_dataset(vla, synthetic_observations(vla, n, seed=0)), seed=0)


def observations(vla, n: int = 2) -> list[dict]:
    obs = synthetic_observations(vla, n, seed=5, instructions=("reach", "open the top drawer of the cabinet"))
    return obs


def predict(vla, obs: list[dict]) -> torch.Tensor:
    inputs = vla.preprocess(obs)
    if vla.family == "smolvla":  # the same Euler start noise for every model compared
        inputs["noise"] = torch.randn(vla.noise_shape(len(obs)), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return vla.predict_chunk(inputs).float()


def backbone_lengths(vla, obs: list[dict]) -> list[int]:
    """Sequence length of every backbone call of one policy step (prefill first)."""
    seen: list[int] = []

    def hook(module, args, kwargs):
        x = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else args[0]
        seen.append(x.shape[1])

    h = vla.backbone.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        predict(vla, obs)
    finally:
        h.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_token_prune_shrinks_the_backbone_sequence(models, tmp_path, family):
    vla = copy.deepcopy(models[family])
    full = vla.token_counts().visual
    obs = observations(vla, 1)
    before = backbone_lengths(vla, obs)
    apply_passes(vla, [VisualTokenPruneConfig(keep_ratio=0.5, layer=1)], context(vla))
    kept = round(full * 0.5)
    keep = vla.visual_keep
    assert keep.numel() == kept and torch.equal(keep, keep.sort().values) and int(keep.max()) < full
    assert vla.token_counts().visual == kept
    after = backbone_lengths(vla, obs)
    assert after[0] == before[0] - (full - kept)  # the prefill really is shorter
    e = vla.compression_log[-1]
    assert e["after"]["visual_tokens"] == kept and e["after"]["flops"] < e["before"]["flops"]
    assert e["details"]["visual_tokens_before"] == full and 0 < e["details"]["attention_mass_kept"] < 1
    y = predict(vla, obs)
    assert torch.isfinite(y).all() and y.shape == predict(models[family], obs).shape
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "pruned"))
    assert (tmp_path / "pruned" / TOKENS_FILE).is_file()
    assert torch.equal(loaded.visual_keep, keep) and loaded.token_counts().visual == kept
    assert torch.equal(predict(loaded, obs), y)
    assert np.isfinite(loaded.act(obs[0])).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_batch_rows_match_single_observations(models, family):
    """Padding of different prompt lengths after the shortened visual block: masks and positions
    still make each row compute what it would alone."""
    vla = copy.deepcopy(models[family])
    apply_passes(vla, [VisualTokenPruneConfig(budget=3, layer=0)], context(vla))
    obs = observations(vla, 2)
    batch = predict(vla, obs)
    for i, o in enumerate(obs):
        alone = predict(vla, [o])
        if family == "smolvla":  # the noise of row i in the batch is not the noise of a batch of one
            inputs = vla.preprocess([o])
            inputs["noise"] = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(3))[i:i + 1]
            with torch.no_grad():
                alone = vla.predict_chunk(inputs).float()
        torch.testing.assert_close(batch[i], alone[0], atol=1e-5, rtol=1e-4)


def test_smolvla_prune_keeps_image_special_tokens(tmp_path):
    vla = build("smolvla", add_image_special_tokens=True)
    obs = observations(vla, 1)
    before = backbone_lengths(vla, obs)[0]
    apply_passes(vla, [VisualTokenPruneConfig(budget=3, layer=1)], context(vla))
    assert backbone_lengths(vla, obs)[0] == before - (8 - 3)  # 3 special tokens per camera stay
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "p"))
    assert torch.equal(predict(loaded, obs), predict(vla, obs))


@pytest.mark.parametrize("family", FAMILIES)
def test_token_merge_unmerges_to_the_full_grid(models, tmp_path, family):
    vla = copy.deepcopy(models[family])
    obs = observations(vla, 1)
    pixels = vla.preprocess(obs)["pixel_values"]
    shape = lambda m: (m.vision_encoder(pixels.flatten(0, 1) if family == "smolvla" else pixels)).shape  # noqa: E731
    with torch.no_grad():
        grid = shape(vla)
    apply_passes(vla, [TokenMergeConfig(r=2)])
    e = vla.compression_log[-1]
    with torch.no_grad():
        assert shape(vla) == grid  # the projector (concatenation / pixel shuffle) gets the full grid
    vision = [e[k]["per_component"]["vision_encoder"]["flops"] for k in ("before", "after")]
    assert vision[1] < vision[0]
    assert e["after"]["visual_tokens"] == e["before"]["visual_tokens"]
    for rs in e["details"]["r_per_layer"].values():
        assert rs[0] == 2 and rs[-1] == 0  # nothing merged after the last layer
    assert set(vla.state_dict()) == set(models[family].state_dict())  # weights untouched, names kept
    y = predict(vla, obs)
    assert torch.isfinite(y).all()
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "merged"))
    assert json.loads((tmp_path / "merged" / TOKENS_FILE).read_text())["token_merge"]["r_per_layer"] == \
        e["details"]["r_per_layer"]
    assert torch.equal(predict(loaded, obs), y)


def test_tome_without_merges_is_the_original_encoder(models):
    """Proportional attention with every size 1 is plain attention: r = 0 changes nothing."""
    from vla_compress.models import family_of

    for family in ("openvla", "smolvla"):
        vla = copy.deepcopy(models[family])
        obs = observations(vla, 1)
        ref = predict(vla, obs)
        encoders, install_tome = (family_of(vla).hook("tokens", n) for n in ("encoders", "install_tome"))
        install_tome(vla, {"r_per_layer": {n: [0] * e[3] for n, e in encoders(vla).items()}, "mode": "unmerge"})
        torch.testing.assert_close(predict(vla, obs), ref, atol=1e-5, rtol=1e-5)


def test_dinov2_prefix_tokens_never_merge(models, monkeypatch):
    from vla_compress.nn import tome as tome_families

    seen = []
    original = tome_families.bipartite_merge

    def spy(x, keys, size, assign, r):
        seen.append((x.shape[1], keys.shape[1], size.shape[1]))
        return original(x, keys, size, assign, r)

    monkeypatch.setattr(tome_families, "bipartite_merge", spy)
    vla = copy.deepcopy(models["openvla"])
    apply_passes(vla, [TokenMergeConfig(ratio=0.4)])
    seen.clear()
    predict(vla, observations(vla, 1))
    dino = vla.vision_backbone.featurizer.spec
    assert dino.num_prefix_tokens == 5  # CLS + 4 registers
    assert seen and all(n == dino.num_patches for call in seen for n in call)  # patches only enter the matching


@pytest.mark.parametrize("family", FAMILIES)
def test_token_pass_errors(models, family):
    vla = copy.deepcopy(models[family])
    with pytest.raises(PassError, match="'reduce' is not possible"):
        apply_passes(vla, [TokenMergeConfig(r=2, mode="reduce")])
    with pytest.raises(PassError, match="layer must be below"):
        apply_passes(vla, [VisualTokenPruneConfig(layer=50)], context(vla))
    with pytest.raises(PassError, match="more than the"):
        apply_passes(vla, [VisualTokenPruneConfig(budget=1000, layer=0)], context(vla))
    with pytest.raises(PassError, match="needs calibration data"):
        apply_passes(vla, [VisualTokenPruneConfig()])
    apply_passes(vla, [TokenMergeConfig(r=1)])
    with pytest.raises(PassError, match="already merges"):
        apply_passes(vla, [TokenMergeConfig(r=1)])


def test_bad_token_reduction_file_is_a_checkpoint_error(models, tmp_path):
    vla = copy.deepcopy(models["smolvla"])
    apply_passes(vla, [VisualTokenPruneConfig(budget=2, layer=0)], context(vla))
    path = vla.save_pretrained(tmp_path / "p")
    f = path / TOKENS_FILE
    good = json.loads(f.read_text())
    for bad, msg in (({**good, "visual_keep": [5, 1]}, "increasing"), ({**good, "visual_tokens_full": 99}, "99"),
                     ({**good, "token_merge": {"r_per_layer": {"encoder": [9, 9]}, "mode": "unmerge"}}, "encoder"),
                     ({**good, "format_version": 7}, "format_version")):
        f.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=msg) as info:
            type(vla).from_pretrained(path)
        assert TOKENS_FILE in str(info.value)


def test_smolvla_ranking_counts_language_state_and_action_queries(models):
    """At every VLM depth the visual tokens are scored by the real language + state rows of the
    prefill and by the expert's action queries at every Euler step (self- or cross-attention)."""
    from vla_compress.models.smolvla.tokens_smolvla import full_visual_tokens as patch_tokens
    from vla_compress.models.smolvla.tokens_smolvla import rank_visual_tokens
    from vla_compress.passes.calibration import run

    vla = models["smolvla"]
    ctx = context(vla, 2)
    inputs = list(ctx.calibration)
    real_prefix_rows = sum(int(x["lang_masks"].sum()) + 1 for x in inputs)
    queries = len(inputs) * vla.cfg.chunk_size * vla.cfg.num_steps
    kinds = set()
    for layer, plan in enumerate(vla.action_head.plan):
        score, rows = rank_visual_tokens(vla, layer, ctx.calibration, patch_tokens(vla), run)
        assert rows == real_prefix_rows + (queries if plan.expert is not None else 0)
        assert score.shape == (patch_tokens(vla),) and bool((score > 0).all())
        kinds.add(plan.kind)
    assert kinds == {"self", "cross"}


def test_smolvla_fixed_prefix_length_shrinks_with_the_keep_set():
    """LeRobot's prefix_length pads the prefix to a fixed size: a pruned model pads to that size
    minus the dropped tokens, so the backbone really sees fewer positions."""
    vla = build("smolvla", prefix_length=30)
    obs = observations(vla, 1)
    assert backbone_lengths(vla, obs)[0] == 30
    apply_passes(vla, [VisualTokenPruneConfig(budget=3, layer=1)], context(vla))
    assert backbone_lengths(vla, obs)[0] == 30 - (8 - 3)
    assert torch.isfinite(predict(vla, obs)).all()


def test_single_vit_openvla_prunes_and_merges(tmp_path):
    vla = build("openvla", vision_backbone_id="siglip-vit-so400m")
    assert vla.vision_backbone.fused_featurizer is None
    obs = observations(vla, 1)
    apply_passes(vla, [VisualTokenPruneConfig(budget=4, layer=1), TokenMergeConfig(r=2)], context(vla))
    assert vla.token_counts().visual == 4 and list(vla.compression_log[-1]["details"]["r_per_layer"]) == ["featurizer"]
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "p"))
    assert torch.equal(predict(loaded, obs), predict(vla, obs))


def test_pruned_smolvla_needs_every_camera(models):
    from vla_compress.errors import ObservationError

    vla = copy.deepcopy(models["smolvla"])
    apply_passes(vla, [VisualTokenPruneConfig(budget=3, layer=0)], context(vla))
    obs = observations(vla, 1)
    obs[0]["images"].pop("top")
    with pytest.raises(ObservationError, match="spans all 2 cameras; the inputs hold 1"):
        predict(vla, obs)


@pytest.mark.parametrize("family", ["openvla", "smolvla"])
def test_token_merge_after_width_pruned_vision_heads(models, tmp_path, family):
    """ToMe's attention reads the head width from the projections, as the encoders do once
    width-prune has removed heads."""
    from vla_compress.passes.prune import WidthPruneConfig

    vla = copy.deepcopy(models[family])
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, where="vision_encoder")], context(vla))
    params = [vla.compression_log[-1][k]["per_component"]["vision_encoder"]["params"] for k in ("before", "after")]
    assert params[1] < params[0]  # heads really removed
    obs = observations(vla, 1)
    apply_passes(vla, [TokenMergeConfig(r=2)])
    y = predict(vla, obs)
    assert torch.isfinite(y).all()
    loaded = type(vla).from_pretrained(vla.save_pretrained(tmp_path / "p"))
    assert torch.equal(predict(loaded, obs), y)
