"""layer-drop and width-prune on the OpenVLA, OpenVLA-OFT and SmolVLA tiny fixtures: exact parameter
reductions, the shapes and configs they claim, end-to-end action chunks, bit-identical save/reload,
importance from calibration data, and clear errors for what cannot be pruned consistently."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.passes.conftest import context_for
from vla_compress.errors import PassError
from vla_compress.passes import apply_passes
from vla_compress.passes.prune import LayerDropConfig, WidthPruneConfig
from vla_compress.passes.prune.layout import family_stacks

FAMILIES = ("openvla", "openvla-oft", "smolvla")


@pytest.fixture(scope="module")
def family_models() -> dict:
    from vla_compress.models.openvla.adapter import OpenVLA, OpenVLAOFT
    from vla_compress.models.smolvla.adapter import SmolVLA

    return {"openvla": OpenVLA.tiny(seed=0), "openvla-oft": OpenVLAOFT.tiny(seed=0), "smolvla": SmolVLA.tiny(seed=0)}


@pytest.fixture
def model(family_models):
    """model(family) -> a private copy (passes mutate models)."""
    return lambda family: copy.deepcopy(family_models[family])


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def stack(vla, name: str):
    return next(s for s in family_stacks(vla) if s.name == name)


def inputs_for(vla, seed: int = 0) -> dict:
    """Two observations built by the family's own processor (+ fixed Euler noise for SmolVLA)."""
    from vla_compress.passes import synthetic_observations

    inputs = vla.preprocess(synthetic_observations(vla, 2, seed=seed))
    if vla.family == "smolvla":
        inputs["noise"] = torch.randn(vla.noise_shape(2), generator=torch.Generator().manual_seed(seed))
    return inputs


def reload(vla, path):
    from vla_compress.models.openvla.adapter import OpenVLA
    from vla_compress.models.smolvla.adapter import SmolVLA

    vla.save_pretrained(path)
    if vla.family == "smolvla":
        return SmolVLA.from_pretrained(path)
    return OpenVLA.from_pretrained(path, **({"unnorm_key": "bridge_orig"} if vla.family == "openvla" else {}))


def check_predicts_and_round_trips(vla, tmp_path) -> None:
    """Finite action chunks of the right shape end to end, and save -> reload -> identical outputs."""
    spec = vla.action_spec
    inputs = inputs_for(vla)
    with torch.no_grad():
        before = vla.predict_chunk(dict(inputs))
    assert before.shape == (2, spec.chunk_size, spec.dim) and torch.isfinite(before).all()
    loaded = reload(vla, tmp_path / "pruned")
    assert [s.sizes() for s in family_stacks(loaded)] == [s.sizes() for s in family_stacks(vla)]
    assert n_params(loaded) == n_params(vla)
    with torch.no_grad():
        assert torch.equal(loaded.predict_chunk(dict(inputs)), before)
    from vla_compress.passes import synthetic_observations

    action = loaded.act(synthetic_observations(loaded, 1, seed=5)[0])
    assert np.isfinite(action).all() and action.shape[-1] == spec.dim


def removed_by_width(st, before, after, dim: int) -> int:
    """Parameters a width change removes from one stack, from the layout's formulas."""
    hd, total = st.head_dim, 0
    for (h0, kv0, m0), (h1, kv1, m1) in zip(before, after):
        dq, dkv, dm = (h0 - h1) * hd, (kv0 - kv1) * hd, m0 - m1
        if st.fused_qkv:  # qkv rows (+ bias) for q, k and v, proj columns
            total += 3 * dq * (dim + 1) + dq * dim
        else:
            b = int(st.bias)
            total += dq * (dim + b) + 2 * dkv * (st.layers[0].self_attn.k_proj.in_features + b) + dq * dim
        total += dm * (dim + (0 if st.gated_mlp else 1)) + dm * dim + (dm * dim if st.gated_mlp else 0)
    return total


# --- layer-drop ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ("openvla", "openvla-oft"))
def test_openvla_layer_drop_backbone(model, family, tmp_path):
    vla = model(family)
    layers = list(vla.backbone.layers)
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=1)], context_for(vla))
    d = vla.compression_log[-1]["details"]["backbone"]
    (dropped,) = d["dropped"]
    assert len(d["scores"]) == 2
    assert n_params(vla) == before - n_params(layers[dropped])
    assert len(vla.backbone.layers) == 1 == vla.language_model.config.num_hidden_layers
    assert vla.cfg.to_dict()["text_config"]["num_hidden_layers"] == 1 == vla.cfg.llama["num_hidden_layers"]
    assert vla.backbone.layers[0].self_attn.layer_idx == 0
    check_predicts_and_round_trips(vla, tmp_path)


def test_openvla_layer_drop_vision_keeps_the_unused_last_block(model, tmp_path):
    vla = model("openvla-oft")
    vits = {b: getattr(vla.vision_backbone, b) for b in ("featurizer", "fused_featurizer")}
    blocks = {b: list(v.blocks) for b, v in vits.items()}
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=1, where="vision_encoder")], context_for(vla))
    details = vla.compression_log[-1]["details"]
    removed = 0
    for b, vit in vits.items():
        d = details[f"vision_encoder.{b}"]
        assert len(d["scores"]) == 2  # only the 2 blocks that run (OpenVLA reads the second-to-last)
        assert d["kept"][-1] == 2 and len(vit.blocks) == 2 and vit.blocks[-1] is blocks[b][2]
        assert vit.spec.depth == 2 and vit.spec.feature_layer == 0
        removed += n_params(blocks[b][d["dropped"][0]])
    assert n_params(vla) == before - removed
    overrides = vla.cfg.to_dict()["vla_compress"]["vision_backbone_overrides"]
    assert [o["depth"] for o in overrides] == [2, 2]
    check_predicts_and_round_trips(vla, tmp_path)
    with pytest.raises(PassError, match="cannot drop 1 of vision_encoder.featurizer's 1 layers .*the last 1 never run"):
        apply_passes(vla, [LayerDropConfig(num_layers=1, where="vision_encoder")], context_for(vla, n=1))


def test_smolvla_layer_drop_removes_vlm_and_expert_layers_in_blocks(model, tmp_path):
    vla = model("smolvla")
    vlm, expert = list(vla.backbone.layers), list(vla.action_head.lm_expert.layers)
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(num_layers=2)], context_for(vla))
    d = vla.compression_log[-1]["details"]["backbone"]
    assert len(d["scores"]) == 2  # two blocks of (self-attention, cross-attention) layers
    assert d["dropped"] in ([0, 1], [2, 3]) and d["dropped_with"] == {"action_head": d["dropped"]}
    assert n_params(vla) == before - sum(n_params(vlm[i]) + n_params(expert[i]) for i in d["dropped"])
    assert len(vla.backbone.layers) == 2 == len(vla.action_head.lm_expert.layers) == vla.arch.vlm_layers
    assert [p.kind for p in vla.arch.plan] == ["self", "cross"] and vla.cfg.raw["num_vlm_layers"] == 2
    kept = [i for i in range(4) if i not in d["dropped"]]
    assert list(vla.action_head.lm_expert.layers) == [expert[i] for i in kept]
    check_predicts_and_round_trips(vla, tmp_path)
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["num_vlm_layers"] == 2


def test_smolvla_layer_drop_vision(model, tmp_path):
    vla = model("smolvla")
    layers = list(vla.vision_encoder.encoder.layers)
    before = n_params(vla)
    apply_passes(vla, [LayerDropConfig(ratio=0.5, metric="angular", where="vision_encoder")], context_for(vla))
    (dropped,) = vla.compression_log[-1]["details"]["vision_encoder"]["dropped"]
    assert n_params(vla) == before - n_params(layers[dropped]) and vla.arch.vlm.vision.num_layers == 1
    check_predicts_and_round_trips(vla, tmp_path)
    vlm_config = json.loads((tmp_path / "pruned" / "vlm" / "config.json").read_text())
    assert vlm_config["vision_config"]["num_hidden_layers"] == 1


def test_layer_drop_scores_come_from_the_calibration_data(model):
    scores = []
    for seed in (0, 1):
        vla = model("openvla")
        apply_passes(vla, [LayerDropConfig(num_layers=1)], context_for(vla, seed=seed))
        scores.append(vla.compression_log[-1]["details"]["backbone"]["scores"])
    assert scores[0] != scores[1]
    vla = model("openvla")
    with pytest.raises(PassError, match="'layer-drop' needs calibration data"):
        apply_passes(vla, [LayerDropConfig(num_layers=1)])


# --- width-prune --------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_width_prune_backbone(model, family, tmp_path):
    vla = model(family)
    st = stack(vla, "backbone")
    before_sizes, before = st.sizes(), n_params(vla)
    gqa = "query_heads" if family == "smolvla" else "kv_groups"
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, gqa=gqa)], context_for(vla))
    after_sizes = st.sizes()
    if family == "smolvla":  # 4 heads over 2 KV heads: one query head per group goes, KV heads stay;
        # the last VLM layer only makes keys/values, so its output projection and MLP are not scored
        assert after_sizes == [(2, 2, 48)] * 3 + [before_sizes[-1]]
    else:  # 4 heads, 4 KV heads: half the KV groups go
        assert after_sizes == [(2, 2, 64)] * 2
    dim = st.layers[0].self_attn.q_proj.in_features
    assert before - n_params(vla) == removed_by_width(st, before_sizes, after_sizes, dim)
    for layer, (h, kv, m) in zip(st.layers, after_sizes):
        assert layer.self_attn.o_proj.in_features == h * st.head_dim and layer.mlp.down_proj.in_features == m
    if family != "smolvla":
        text = vla.cfg.to_dict()["text_config"]
        assert (text["num_attention_heads"], text["num_key_value_heads"], text["intermediate_size"],
                text["head_dim"]) == (2, 2, 64, 16)
        assert all(layer.self_attn.num_key_value_groups == 1 for layer in st.layers)
    check_predicts_and_round_trips(vla, tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_width_prune_vision(model, family, tmp_path):
    vla = model(family)
    stacks = [s for s in family_stacks(vla) if s.component == "vision_encoder"]
    before_sizes, before = [s.sizes() for s in stacks], n_params(vla)
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.25, where="vision_encoder")], context_for(vla))
    removed = 0
    for st, sizes0 in zip(stacks, before_sizes):
        sizes1 = st.sizes()
        n_run = st.n_width_active()
        h, _, m = sizes0[0]
        assert sizes1[:n_run] == [(h // 2, h // 2, m - m // 4)] * n_run and sizes1[n_run:] == sizes0[n_run:]
        dim = st.layers[0].mlp.fc1.in_features  # the residual width (and timm's LayerScale) is unchanged
        removed += removed_by_width(st, sizes0, sizes1, dim)
        if st.fused_qkv and st.layers[0].ls1.__class__.__name__ == "LayerScale":
            assert st.layers[0].ls2.scale_factor.numel() == dim
    assert before - n_params(vla) == removed
    check_predicts_and_round_trips(vla, tmp_path)


def test_openvla_scope_selects_one_vit(model, tmp_path):
    vla = model("openvla")
    siglip = [list(s) for s in stack(vla, "vision_encoder.fused_featurizer").sizes()]
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, where={"components": ["vision_encoder"],
                                                              "include": ["vision_encoder.featurizer.blocks.*"]})],
                 context_for(vla))
    assert list(vla.compression_log[-1]["details"]) == ["vision_encoder.featurizer"]
    assert [m for _, _, m in stack(vla, "vision_encoder.featurizer").sizes()] == [32, 32, 64]
    assert [list(s) for s in stack(vla, "vision_encoder.fused_featurizer").sizes()] == siglip
    assert list(vla.cfg.settings.layer_sizes) == ["vision_encoder.featurizer"]
    check_predicts_and_round_trips(vla, tmp_path)


def test_smolvla_width_prune_action_expert(model, tmp_path):
    vla = model("smolvla")
    st = stack(vla, "action_head")
    before_sizes, before = st.sizes(), n_params(vla)
    apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, gqa="query_heads", where="action_head")],
                 context_for(vla))
    after = st.sizes()
    assert after == [(2, 2, before_sizes[0][2] // 2)] * 4
    removed = 0
    for layer, s0, s1 in zip(st.layers, before_sizes, after):  # cross layers' k/v read the VLM's 32-wide K/V
        removed += removed_by_width(st, [s0], [s1], layer.self_attn.q_proj.in_features)
    assert before - n_params(vla) == removed
    sizes = vla.cfg.raw["vla_compress"]["layer_sizes"]
    assert sizes["action_head"] == [list(s) for s in after]
    check_predicts_and_round_trips(vla, tmp_path)


def test_openvla_global_allocation_records_per_layer_sizes(model, tmp_path):
    vla = model("openvla")
    with torch.no_grad():  # most of layer 0's MLP channels become nearly useless
        vla.backbone.layers[0].mlp.down_proj.weight[:, :96] *= 1e-4
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.25, allocation="global", round_to=32)], context_for(vla))
    widths = [m for _, _, m in stack(vla, "backbone").sizes()]
    assert widths == [64, 128]
    d = vla.cfg.to_dict()
    assert d["vla_compress"]["layer_sizes"]["backbone"] == [[4, 4, 64], [4, 4, 128]]
    assert d["text_config"]["intermediate_size"] == 128  # the base shape the loader builds
    check_predicts_and_round_trips(vla, tmp_path)


def test_width_importance_comes_from_the_calibration_data(model):
    """Wanda scores weigh each channel by its activation norm on the calibration inputs: a channel
    made silent on those inputs goes first although its weights are the largest."""
    vla = model("openvla-oft")
    layer = vla.backbone.layers[0]
    with torch.no_grad():
        layer.mlp.down_proj.weight[:, 5] *= 100.0
        layer.mlp.up_proj.weight[5] = 0.0  # channel 5's input is silu(gate) * 0 = 0 on any data
    big = layer.mlp.down_proj.weight.abs().max()  # in channel 5's column
    for importance, kept_big in (("magnitude", True), ("wanda", False)):
        v = copy.deepcopy(vla)
        apply_passes(v, [WidthPruneConfig(mlp_ratio=0.5, importance=importance,
                                          where={"include": ["backbone.layers.0"]})], context_for(v))
        assert bool(v.backbone.layers[0].mlp.down_proj.weight.abs().max() == big) is kept_big


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_passes_compose_and_reload(model, family, tmp_path):
    """Non-uniform vision widths, then a layer drop, then narrower backbone layers: every size is
    recorded and rebuilt on load."""
    vla = model(family)
    gqa = "query_heads" if family == "smolvla" else "kv_groups"
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.4, heads_ratio=0.5, allocation="global", where="vision_encoder"),
                       LayerDropConfig(num_layers=2 if family == "smolvla" else 1),
                       WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.25, gqa=gqa)], context_for(vla))
    assert [e["pass"] for e in vla.compression_log] == ["width-prune", "layer-drop", "width-prune"]
    assert vla.compression_log[-1]["after"]["params"] < vla.compression_log[0]["before"]["params"]
    check_predicts_and_round_trips(vla, tmp_path)


def test_pruned_smolvla_exports_to_onnx_with_parity(model, tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.models.smolvla import SmolVLA
    from vla_compress.passes import synthetic_observations

    vla = SmolVLA.tiny(seed=1, num_steps=2)  # two Euler steps: a short trace
    apply_passes(vla, [LayerDropConfig(num_layers=2),
                       WidthPruneConfig(heads_ratio=0.5, mlp_ratio=0.5, gqa="query_heads",
                                        where=["vision_encoder", "backbone", "action_head"])], context_for(vla))
    art = export(vla, OnnxExportConfig(), tmp_path / "onnx")
    report = validate(art, vla, synthetic_observations(vla, 2, seed=3))
    assert report.passed and report.max_abs < 1e-4


# --- errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_bad_configs_are_clear_errors(model, family):
    vla = model(family)
    ctx = context_for(vla, n=2)
    with pytest.raises(PassError, match="ratio: must be in"):
        LayerDropConfig(ratio=1.5)
    with pytest.raises(PassError, match="mlp_ratio: must be in"):
        WidthPruneConfig(mlp_ratio=-0.1)
    with pytest.raises(PassError, match="'gripper'.*not supported by this pass"):
        apply_passes(vla, [LayerDropConfig(num_layers=1, where="gripper")], ctx)
    with pytest.raises(PassError, match="'backbone.layers.9' matches no module"):
        apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, where={"include": ["backbone.layers.9"]})], ctx)
    n = len(vla.backbone.layers)
    with pytest.raises(PassError, match=f"cannot drop {n} of backbone's {n} layers"):
        apply_passes(vla, [LayerDropConfig(num_layers=n)], ctx)
    with pytest.raises(PassError, match="'projector'.*not supported by this pass"):
        apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, where="projector")], ctx)
    if family != "smolvla":  # OpenVLA's action head is the LM head / an MLP: no layer stack
        with pytest.raises(PassError, match=f"'action_head' of the {family} family has no prunable layer stack"):
            apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, where="action_head")], ctx)
    assert not getattr(vla, "compression_log", [])


def test_smolvla_refuses_what_would_break_the_expert(model):
    vla = model("smolvla")
    ctx = context_for(vla, n=2)
    with pytest.raises(PassError, match="aligned blocks of 2.*not a multiple of 2"):
        apply_passes(vla, [LayerDropConfig(num_layers=1)], ctx)
    with pytest.raises(PassError, match="expert layers are dropped only together"):
        apply_passes(vla, [LayerDropConfig(num_layers=2, where="action_head")], ctx)
    with pytest.raises(PassError, match="KV heads cannot be removed; use gqa: query_heads"):
        apply_passes(vla, [WidthPruneConfig(heads_ratio=0.5)], ctx)
    with pytest.raises(PassError, match="1 blocks of 2 layers requested but only 0"):
        apply_passes(vla, [LayerDropConfig(num_layers=2, where={"include": ["backbone.layers.1", "backbone.layers.2"]})],
                     ctx)


def test_corrupt_recorded_sizes_are_checkpoint_errors(model, tmp_path):
    from vla_compress.errors import CheckpointError
    from vla_compress.models.openvla.adapter import OpenVLAOFT

    vla = model("openvla-oft")
    apply_passes(vla, [WidthPruneConfig(mlp_ratio=0.5, where="vision_encoder")], context_for(vla, n=2))
    path = vla.save_pretrained(tmp_path / "pruned")
    cfg = json.loads((path / "config.json").read_text())
    cfg["vla_compress"]["layer_sizes"]["vision_encoder.featurizer"] = [[2, 2, 32]]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*layer_sizes.vision_encoder.featurizer lists 1 layers"):
        OpenVLAOFT.from_pretrained(path)
    cfg["vla_compress"]["layer_sizes"]["vision_encoder.featurizer"] = [[2, 2, "wide"]] * 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json.*must be a list of \\[heads, kv_heads, mlp_width\\]"):
        OpenVLAOFT.from_pretrained(path)


# --- sweep --------------------------------------------------------------------------------------------

def test_sweep_candidates_and_scores_for_families(model):
    from vla_compress.passes import synthetic_observations
    from vla_compress.passes.sweep import candidates, sweep

    vla = model("smolvla")
    labels = [label for label, _ in candidates(vla, ("layer-drop", "width-prune"))]
    assert "layer-drop backbone[0:2]" in labels and "layer-drop backbone[2:4]" in labels
    assert not any(label.startswith("layer-drop action_head") for label in labels)
    assert "width-prune action_head heads 50%" in labels
    oft = model("openvla-oft")
    rows = sweep(oft, synthetic_observations(oft, 2, seed=1), synthetic_observations(oft, 2, seed=2),
                 kinds=("layer-drop",))
    assert {r["candidate"] for r in rows} == {"layer-drop backbone[0]", "layer-drop backbone[1]",
                                              "layer-drop vision_encoder.featurizer[0]",
                                              "layer-drop vision_encoder.featurizer[1]",
                                              "layer-drop vision_encoder.fused_featurizer[0]",
                                              "layer-drop vision_encoder.fused_featurizer[1]"}
    assert all("error" not in r and r["params_fraction"] < 1 and np.isfinite(r["action_l1"]) for r in rows)
