"""Bad checkpoints and bad observations: each a clear VLACompressError naming the file or the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vla_compress.errors import CheckpointError, VLACompressError
from vla_compress.fileio import load_safetensors, save_safetensors
from vla_compress.models import load_vla
from vla_compress.models.reference import ReferenceVLA
from vla_compress.errors import ObservationError


@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path):
    """A private copy of the tiny regression checkpoint, free to corrupt."""
    return shutil.copytree(tiny_checkpoints["regression"], tmp_path / "ckpt")


@pytest.mark.parametrize("loader", [load_vla, ReferenceVLA.from_pretrained], ids=["load_vla", "from_pretrained"])
def test_missing_checkpoint_dir(tmp_path, loader):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointError, match="not found") as e:
        loader(missing)
    assert e.value.path == missing
    assert str(missing) in str(e.value)


def test_checkpoint_path_is_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="directory") as e:
        load_vla(f)
    assert e.value.path == f


def test_missing_config_json(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not found") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "config.json"


def test_invalid_json_config(ckpt):
    (ckpt / "config.json").write_text('{"head": "regression",')
    with pytest.raises(CheckpointError, match="invalid JSON at line 1") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "config.json"


def test_config_json_not_an_object(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "config.json"


def test_unknown_config_keys(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["num_experts"] = 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown config keys: \['num_experts'\]") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "config.json"


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_vla(ckpt)
    assert e.value.path == f
    assert "model.safetensors" in str(e.value)


def test_wrong_shaped_tensor_is_listed(ckpt):
    f = ckpt / "model.safetensors"
    state = load_safetensors(f)
    state["action_head.fc2.weight"] = torch.zeros(3, 3)
    save_safetensors(state, f)
    with pytest.raises(CheckpointError, match="wrong shapes") as e:
        load_vla(ckpt)
    assert e.value.path == f
    assert "action_head.fc2.weight: file (3, 3) vs model (4, 64)" in str(e.value)


def test_missing_tensor_is_listed(ckpt):
    f = ckpt / "model.safetensors"
    state = load_safetensors(f)
    del state["projector.fc1.bias"]
    save_safetensors(state, f)
    with pytest.raises(CheckpointError, match=r"missing tensors \['projector.fc1.bias'\]") as e:
        load_vla(ckpt)
    assert e.value.path == f


def test_unexpected_tensor_is_listed(ckpt):
    f = ckpt / "model.safetensors"
    state = load_safetensors(f)
    state["lm_head.weight"] = torch.zeros(2, 2)
    save_safetensors(state, f)
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['lm_head.weight'\]"):
        load_vla(ckpt)


def test_config_head_does_not_match_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["head"] = "tokens"  # weights are for the regression head
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match config.json") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "model.safetensors"


@pytest.mark.parametrize("name", ["tokenizer.json", "dataset_statistics.json", "model.safetensors"])
def test_missing_component_file(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match="not found") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / name


def test_malformed_statistics(ckpt):
    (ckpt / "dataset_statistics.json").write_text(json.dumps({"ds": {"action": {"q01": [0.0]}}}))
    with pytest.raises(CheckpointError, match="malformed statistics") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "dataset_statistics.json"


def test_corrupt_tokenizer(ckpt):
    (ckpt / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a valid tokenizer") as e:
        load_vla(ckpt)
    assert e.value.path == ckpt / "tokenizer.json"


# --- observations -----------------------------------------------------------------------------

def test_observation_missing_camera(tiny_model, make_obs):
    obs = make_obs(0, camera="topview")
    with pytest.raises(ObservationError, match=r"no image from camera\(s\) \['corner'\].*topview"):
        tiny_model.act(obs)


def test_observation_wrong_state_size(tiny_model, make_obs):
    with pytest.raises(ObservationError, match="state has 7 values, the model expects 4"):
        tiny_model.act(make_obs(0, state_dim=7))


def test_observation_not_rgb(tiny_model, make_obs):
    obs = make_obs(0)
    obs["images"]["corner"] = obs["images"]["corner"][..., 0]
    with pytest.raises(ObservationError, match=r"camera 'corner': expected an image of shape \(H, W, 3\), got \(32, 32\)"):
        tiny_model.act(obs)


def test_batch_with_mixed_image_sizes(tiny_model, make_obs):
    with pytest.raises(ObservationError, match="share a shape"):
        tiny_model.preprocess([make_obs(0, size=32), make_obs(1, size=48)])


def test_observation_error_is_a_user_error():
    assert issubclass(ObservationError, VLACompressError)


def test_other_image_sizes_are_resized(tiny_models, make_obs):
    model = tiny_models["regression"]
    inputs = model.preprocess([make_obs(0, size=128)])
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert inputs["pixel_values"].min() >= -1 and inputs["pixel_values"].max() <= 1
    assert np.isfinite(model.act(make_obs(0, size=128))).all()
