"""Reading LeRobot's SmolVLA layout: family detection, components, save/load round trip, the VLM
directory lookup, `vla-compress inspect`, the SmolVLA-base shape, and loud failures on bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from vla_compress.cli.main import main
from vla_compress.errors import CheckpointError
from vla_compress.models import detect_family, load_vla
from vla_compress.models.smolvla import SmolVLA
from vla_compress.models.smolvla.modeling_smolvla import checkpoint_view

from .conftest import make_obs

torch.set_num_threads(1)
WEIGHTS = "model.safetensors"


def chunk_for(model, obs, seed=0):
    x = model.preprocess(obs)
    noise = torch.randn(model.noise_shape(len(obs)), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.predict_chunk({**x, "noise": noise})


def test_detected_and_loaded_with_components(smolvla_dir):
    assert detect_family(smolvla_dir) == "smolvla"
    vla = load_vla(smolvla_dir)
    assert isinstance(vla, SmolVLA) and vla.family == "smolvla"
    assert list(vla.components()) == ["vision_encoder", "projector", "backbone", "action_head", "proprio_projector"]
    file = load_file(str(smolvla_dir / WEIGHTS))
    assert {t.dtype for t in file.values()} == {torch.bfloat16, torch.float32}  # stored like smolvla_base
    assert sum(p.numel() for p in vla.parameters()) == sum(t.numel() for t in file.values())
    assert all(p.dtype == torch.float32 for p in vla.parameters())
    assert len(vla.backbone.layers) == 4  # num_vlm_layers of the VLM config's 6
    assert vla.action_head.lm_expert.layers[1].self_attn.k_proj.in_features == 32  # cross: KV width
    assert vla.action_head.lm_expert.layers[0].self_attn.k_proj.in_features == 48  # self: expert width
    spec = vla.action_spec
    assert (spec.head, spec.dim, spec.chunk_size, spec.integration_steps) == ("flow", 4, 5, 4)


def test_save_round_trip_keeps_the_layout(smolvla_dir, smolvla_model, tmp_path):
    out = smolvla_model.save_pretrained(tmp_path / "saved")
    orig, saved = load_file(str(smolvla_dir / WEIGHTS)), load_file(str(out / WEIGHTS))
    assert set(saved) == set(orig)
    assert all(saved[k].shape == orig[k].shape and torch.equal(saved[k], orig[k].float()) for k in orig)
    for name in ("policy_preprocessor.json", "policy_postprocessor.json", "train_config.json",
                 "policy_preprocessor_step_5_normalizer_processor.safetensors",
                 "policy_postprocessor_step_0_unnormalizer_processor.safetensors"):
        assert (out / name).read_bytes() == (smolvla_dir / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text()) == json.loads((smolvla_dir / "config.json").read_text())
    # the saved directory carries the VLM's config and tokenizer: it loads without the original VLM dir
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    cfg = json.loads((moved / "config.json").read_text())
    cfg["vlm_model_name"] = "HuggingFaceTB/not-downloaded"
    (moved / "config.json").write_text(json.dumps(cfg))
    again = SmolVLA.from_pretrained(moved)
    obs = [make_obs(7)]
    assert torch.equal(chunk_for(again, obs), chunk_for(smolvla_model, obs))


def test_two_loads_act_identically(smolvla_dir):
    """The default noise stream is seeded: same checkpoint, same observation -> same actions."""
    a, b = SmolVLA.from_pretrained(smolvla_dir), SmolVLA.from_pretrained(smolvla_dir)
    obs = make_obs(3)
    assert np.array_equal(a.act(obs), b.act(obs))
    c = SmolVLA.from_pretrained(smolvla_dir, noise_seed=1)
    assert not np.allclose(c.act(obs), SmolVLA.from_pretrained(smolvla_dir).act(obs))


def _rewrite(path, edit) -> None:
    t = load_file(str(path / WEIGHTS))
    edit(t)
    save_file(t, str(path / WEIGHTS))


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.pop("model.vlm_with_expert.lm_expert.layers.2.mlp.up_proj.weight"),
     ["missing", "model.vlm_with_expert.lm_expert.layers.2.mlp.up_proj.weight"]),
    (lambda t: t.update({"model.action_in_proj.weight": torch.zeros(48, 7)}),
     ["wrong shapes", "model.action_in_proj.weight", "(48, 7)"]),
    (lambda t: t.update({"model.vlm_with_expert.vlm.model.text_model.layers.5.input_layernorm.weight": torch.ones(64)}),
     ["unexpected", "text_model.layers.5"]),
])
def test_bad_weights_fail_loudly(smolvla_dir, copy_dir, edit, words):
    path = copy_dir(smolvla_dir)
    _rewrite(path, edit)
    with pytest.raises(CheckpointError) as e:
        SmolVLA.from_pretrained(path)
    assert str(e.value).startswith(str(path / WEIGHTS))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_missing_vlm_names_what_was_tried(smolvla_dir, copy_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    path = copy_dir(smolvla_dir)
    cfg = json.loads((path / "config.json").read_text())
    vlm_dir = cfg["vlm_model_name"]
    cfg["vlm_model_name"] = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not available locally.*vlm_path="):
        SmolVLA.from_pretrained(path)
    assert isinstance(SmolVLA.from_pretrained(path, vlm_path=vlm_dir), SmolVLA)
    # the Hugging Face cache layout is found without any argument
    snap = tmp_path / "hf" / "hub" / "models--HuggingFaceTB--SmolVLM2-500M-Video-Instruct" / "snapshots" / "abc123"
    shutil.copytree(vlm_dir, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    assert isinstance(SmolVLA.from_pretrained(path), SmolVLA)


@pytest.mark.parametrize("change, file, words", [
    ({"n_action_steps": 9}, "config.json", "n_action_steps"),
    ({"adapt_to_pi_aloha": True}, "config.json", "adapt_to_pi_aloha"),
    ({"num_expert_layers": 2}, "config.json", "cannot run this layout either"),  # self layer 2 on a cross expert
])
def test_bad_configs_name_the_file(smolvla_dir, copy_dir, change, file, words):
    path = copy_dir(smolvla_dir)
    cfg = {**json.loads((path / "config.json").read_text()), **change}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=words) as e:
        SmolVLA.from_pretrained(path)
    assert str(e.value).startswith(str(path / file))


def test_unknown_processor_step_is_refused(smolvla_dir, copy_dir):
    path = copy_dir(smolvla_dir)
    pre = json.loads((path / "policy_preprocessor.json").read_text())
    pre["steps"].insert(2, {"registry_name": "my_custom_step", "config": {}})
    (path / "policy_preprocessor.json").write_text(json.dumps(pre))
    with pytest.raises(CheckpointError, match="my_custom_step.*not supported") as e:
        SmolVLA.from_pretrained(path)
    assert str(e.value).startswith(str(path / "policy_preprocessor.json"))


def test_inspect_shows_components_tokens_and_action_spec(smolvla_dir, tmp_path):
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(main, ["inspect", str(smolvla_dir), "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    assert "family=smolvla" in result.output
    for name in ("vision_encoder", "projector", "backbone", "action_head", "proprio_projector", "total"):
        assert name in result.output
    data = json.loads(out.read_text())
    # 2 cameras x (4 x 4 patches pixel-shuffled by 2 = 4 tokens); the task padded to 12; one state token
    assert data["tokens"] == {"visual": 8, "text": 12, "proprio": 1, "action": 5, "prefill": 21}
    assert data["action_spec"] == {"dim": 4, "chunk_size": 5, "head": "flow", "n_bins": 0, "tokens_per_step": 0,
                                   "integration_steps": 4}
    per = data["count"]["per_component"]
    assert per["action_head"]["calls"] == 4 and per["backbone"]["calls"] == 1 and per["vision_encoder"]["calls"] == 1
    assert all(per[c]["flops"] > 0 for c in ("vision_encoder", "projector", "backbone", "action_head"))
    assert per["action_head"]["weight_bytes_read"] == 4 * per["action_head"]["param_bytes"]


def test_smolvla_base_shape_on_the_meta_device(tmp_path):
    """SmolVLA-base's exact architecture: lerobot/smolvla_base holds 500 tensors, 450,046,176 parameters."""
    vla = SmolVLA.realistic()
    assert next(vla.parameters()).device.type == "meta"
    assert sum(p.numel() for p in vla.parameters()) == 450_046_176
    comps = {n: sum(p.numel() for p in m.parameters()) for n, m in vla.components().items()}
    assert comps["vision_encoder"] == 86_433_024 and comps["projector"] == 11_796_480
    assert comps["action_head"] == 98_245_840 + 1_603_472  # expert + action/time projections
    assert len(checkpoint_view(vla).state_dict()) == 500
    assert vla.arch.expert_hidden == 720 and vla.arch.expert_intermediate == 2048
    assert vla.token_counts().to_dict() == {"visual": 192, "text": 48, "proprio": 1, "action": 50, "prefill": 241}
    # its processor files (identity statistics, the tiny tokenizer as vlm/) make a loadable processor
    from vla_compress.models.smolvla.adapter import read_processor_files, write_processor_files

    write_processor_files(vla, tmp_path)
    cfg, processor, vlm_dir = read_processor_files(tmp_path)
    assert vlm_dir == tmp_path / "vlm" and cfg.cameras == ("image", "image2", "image3")
    x = processor([vla.dummy_observation()])
    assert x["pixel_values"].shape == (1, 3, 3, 512, 512) and x["lang_tokens"].shape == (1, 48)
