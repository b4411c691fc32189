"""Loading the HF layout unchanged, failing loudly on bad files, and saving it back bit-identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_compress.errors import CheckpointError, ConfigError, UnsafeFileError
from vla_compress.models import detect_family, load_vla
from vla_compress.models.openvla import OpenVLA, OpenVLAOFT
from vla_compress.models.openvla.modeling_openvla import L1RegressionActionHead
from vla_compress.errors import ObservationError

from .conftest import make_obs


def file_tensors(path) -> dict:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(path / shard)))
    return out


# ----------------------------------------------------------------------------------- loading
def test_fixture_has_the_hf_layout(openvla_dir, oft_dir):
    names = {p.name for p in openvla_dir.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "preprocessor_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    shards = sorted(n for n in names if n.startswith("model-"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    oft = {p.name for p in oft_dir.iterdir()}
    assert {"action_head--150000_checkpoint.pt", "proprio_projector--150000_checkpoint.pt",
            "dataset_statistics.json"} <= oft


def test_state_dict_names_are_the_checkpoint_names(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    tensors = file_tensors(openvla_dir)
    assert set(vla.state_dict()) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(vla.state_dict()[name], t), name
    for name in ("vision_backbone.featurizer.blocks.0.ls1.scale_factor", "vision_backbone.featurizer.reg_token",
                 "vision_backbone.fused_featurizer.attn_pool.latent", "projector.fc3.weight",
                 "language_model.model.layers.1.mlp.gate_proj.weight", "language_model.lm_head.weight"):
        assert name in tensors


def test_family_detection_and_act(openvla_dir, oft_dir, oft_small_dir):
    for d in (openvla_dir, oft_dir, oft_small_dir):
        assert detect_family(d) == "openvla"
    vla = load_vla(openvla_dir, unnorm_key="bridge_orig")
    assert type(vla) is OpenVLA and vla.family == "openvla"
    a = vla.act(make_obs(0))
    assert a.shape == (1, 7) and a.dtype == np.float32 and np.isfinite(a).all()
    oft = load_vla(oft_dir)
    assert type(oft) is OpenVLAOFT and oft.family == "openvla-oft"
    assert oft.act(make_obs(1, cameras=("a", "b"), state_dim=8)).shape == (8, 7)
    small = load_vla(oft_small_dir)
    assert small.act(make_obs(2)).shape == (2, 3)


def test_components_alias_the_checkpoint_modules(openvla_dir, oft_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    comps = vla.components()
    assert list(comps) == ["vision_encoder", "projector", "backbone", "action_head"]
    assert comps["backbone"] is vla.language_model.model and comps["action_head"] is vla.language_model.lm_head
    assert comps["vision_encoder"] is vla.vision_backbone
    new_head = torch.nn.Linear(64, 576, bias=False)
    vla.action_head = new_head  # a pass replacing a component replaces the checkpoint's module
    assert vla.language_model.lm_head is new_head and "action_head" not in vla._modules
    oft = OpenVLA.from_pretrained(oft_dir)
    assert list(oft.components()) == ["vision_encoder", "projector", "backbone", "action_head", "proprio_projector"]
    assert isinstance(oft.action_head, L1RegressionActionHead)


def test_oft_settings_inferred_or_given(oft_dir, oft_small_dir):
    oft = OpenVLAOFT.from_pretrained(oft_dir)  # LIBERO shapes: (7-d actions, 8-d proprio) -> chunk 8, 2 images
    assert (oft.cfg.settings.num_actions_chunk, oft.cfg.settings.num_images_in_input) == (8, 2)
    assert oft.stats.unnorm_key == "libero_spatial_no_noops"  # dataset_statistics.json replaces norm_stats
    o4 = OpenVLAOFT.from_pretrained(oft_dir, num_actions_chunk=4, num_images_in_input=1)
    assert o4.action_spec.chunk_size == 4 and o4.act(make_obs(0, state_dim=8)).shape == (4, 7)
    small = OpenVLAOFT.from_pretrained(oft_small_dir)
    assert small.proprio_projector is None and small.action_spec.chunk_size == 2


def test_unnorm_key_errors_list_the_datasets(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir)  # two datasets, none chosen: loading and counting still work
    assert vla.action_spec.dim == 7
    with pytest.raises(ConfigError, match="bridge_orig.*fractal20220817_data"):
        vla.act(make_obs(0))
    with pytest.raises(CheckpointError, match="unnorm_key 'nope'.*bridge_orig") as e:
        OpenVLA.from_pretrained(openvla_dir, unnorm_key="nope")
    assert e.value.path == openvla_dir


def test_observation_errors(openvla_dir, oft_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    with pytest.raises(ObservationError, match="set cameras"):
        vla.act(make_obs(0, cameras=("a", "b")))
    with pytest.raises(ObservationError, match="uint8"):
        vla.act({"images": {"a": np.zeros((42, 42, 3), np.float32)}, "instruction": "x"})
    picked = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig", cameras=["b"])
    assert picked.act(make_obs(0, cameras=("a", "b"))).shape == (1, 7)
    oft = OpenVLA.from_pretrained(oft_dir)
    with pytest.raises(ObservationError, match="state"):
        oft.act(make_obs(0, cameras=("a", "b")))
    with pytest.raises(ObservationError, match="8"):
        oft.act(make_obs(0, cameras=("a", "b"), state_dim=5))


# ---------------------------------------------------------------------------- failing loudly
def _edit_shard(path, fn):
    """Apply fn to (tensors, weight_map) of the shard holding the first projector tensor."""
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"]["projector.fc1.weight"]
    tensors = load_file(str(path / shard))
    fn(tensors, index["weight_map"])
    save_file(tensors, str(path / shard), metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    return shard


def test_missing_tensor_names_file_and_tensor(openvla_dir, copy_dir):
    ckpt = copy_dir(openvla_dir)

    def drop(t, wm):
        del t["projector.fc1.weight"], wm["projector.fc1.weight"]

    _edit_shard(ckpt, drop)
    with pytest.raises(CheckpointError, match=r"missing tensors \['projector.fc1.weight'\]") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "model.safetensors.index.json"


def test_misshapen_tensor_names_file_and_tensor(openvla_dir, copy_dir):
    ckpt = copy_dir(openvla_dir)
    _edit_shard(ckpt, lambda t, wm: t.update({"projector.fc1.weight": t["projector.fc1.weight"][:-1].clone()}))
    with pytest.raises(CheckpointError, match=r"wrong shapes projector.fc1.weight: file \(319, 80\) vs model \(320, 80\)"):
        load_vla(ckpt)


def test_shard_disagreeing_with_index(openvla_dir, copy_dir):
    ckpt = copy_dir(openvla_dir)
    shard = _edit_shard(ckpt, lambda t, wm: t.pop("projector.fc1.weight"))
    with pytest.raises(CheckpointError, match="lacks tensors the index assigns to it: \\['projector.fc1.weight'\\]") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / shard
    (ckpt / shard).unlink()
    with pytest.raises(CheckpointError, match="file not found") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / shard


def test_bad_config_and_side_files(openvla_dir, copy_dir):
    ckpt = copy_dir(openvla_dir)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "vision_backbone_id": "clip-vit-l"}))
    with pytest.raises(CheckpointError, match="vision_backbone_id 'clip-vit-l' is not supported") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "config.json"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "tokenizer.json"


def test_oft_head_errors(oft_dir, copy_dir):
    ckpt = copy_dir(oft_dir)
    head_file = ckpt / "action_head--150000_checkpoint.pt"
    state = torch.load(head_file, weights_only=True)
    state["module.model.fc1.weight"] = state["module.model.fc1.weight"][:, :10].clone()
    torch.save(state, head_file)
    with pytest.raises(CheckpointError, match="model.fc1.weight: file \\(64, 10\\)") as e:
        load_vla(ckpt)
    assert e.value.path == head_file
    torch.save({}, ckpt / "action_head--300000_checkpoint.pt")
    with pytest.raises(CheckpointError, match="several action_head files"):
        load_vla(ckpt)


def test_oft_pickle_refused_unless_allowed(oft_small_dir, copy_dir):
    ckpt = copy_dir(oft_small_dir)
    head_file = ckpt / "action_head--latest_checkpoint.pt"
    state = torch.load(head_file, weights_only=True)
    head = L1RegressionActionHead(64, 3, 2)
    head.load_state_dict(state)
    torch.save(head, head_file)  # a whole pickled module: needs arbitrary unpickling
    with pytest.raises(UnsafeFileError, match="refusing to unpickle") as e:
        load_vla(ckpt)
    assert e.value.path == head_file
    vla = load_vla(ckpt, allow_pickle=True)
    ref = OpenVLAOFT.from_pretrained(oft_small_dir)
    obs = make_obs(3)
    np.testing.assert_array_equal(vla.act(obs), ref.act(obs))


# ---------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("which", ["openvla", "oft", "oft_small"])
def test_save_load_round_trip_is_bit_identical(which, openvla_dir, oft_dir, oft_small_dir, tmp_path):
    src = {"openvla": openvla_dir, "oft": oft_dir, "oft_small": oft_small_dir}[which]
    vla = OpenVLA.from_pretrained(src, unnorm_key="bridge_orig" if which == "openvla" else None)
    out = vla.save_pretrained(tmp_path / "saved", max_shard_bytes=300_000)
    again = OpenVLA.from_pretrained(out, unnorm_key="bridge_orig" if which == "openvla" else None)
    a, b = vla.state_dict(), again.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert set(file_tensors(out)) == set(file_tensors(src))
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    cfg_src, cfg_out = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert {k: v for k, v in cfg_out.items() if k != "vla_compress"} == \
        {k: v for k, v in cfg_src.items() if k != "vla_compress"}
    if which == "openvla":
        # nothing inferred; the chosen dataset is remembered
        assert cfg_out["vla_compress"] == {**cfg_src["vla_compress"], "unnorm_key": "bridge_orig"}
    else:  # what OFT's code fixes as constants is now written down
        assert {"num_actions_chunk", "num_images_in_input"} <= set(cfg_out["vla_compress"])
    if which != "openvla":
        parts = sorted(p.name for p in src.glob("*--*.pt"))
        assert sorted(p.name for p in out.glob("*--*.pt")) == parts
        for p in parts:
            s, o = torch.load(src / p, weights_only=True), torch.load(out / p, weights_only=True)
            assert list(s) == list(o) and all(torch.equal(s[k], o[k]) for k in s), p  # prefix kept
        obs = make_obs(4, cameras=("a", "b")[: vla.vision_backbone.num_images], state_dim=8 if which == "oft" else None)
    else:
        obs = make_obs(4)
    np.testing.assert_array_equal(vla.act(obs), again.act(obs))


def test_tiny_constructors():
    assert OpenVLA.tiny(seed=3).act(make_obs(0)).shape == (1, 7)
    oft = OpenVLAOFT.tiny(seed=3, action_dim=3, proprio_dim=4, chunk_size=2, num_images=1)
    assert oft.act(make_obs(0, state_dim=4)).shape == (2, 3)
