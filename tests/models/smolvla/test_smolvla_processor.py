"""SmolVLA's processor pipeline (tokenizer step, image resize with padding, normalisation, cameras)
and select_action's action-chunk queue."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vla_compress.errors import ObservationError
from vla_compress.models.smolvla import SmolVLA
from vla_compress.models.smolvla.fixtures import TINY_POLICY, write_tiny_smolvla

from .conftest import make_obs

torch.set_num_threads(1)
TASKS = ["push the button", "Pick up the cube and put it in the bowl.\n",
         "stack the blocks then open the drawer and close the door and reach to the target location"]


@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_tasks_tokenize_as_lerobots_tokenizer_step(tmp_path, padding):
    """transformers' AutoTokenizer on the same VLM directory, called as LeRobot's tokenizer step calls
    it (after the newline step): max_length 12, truncation, right padding."""
    from transformers import AutoTokenizer

    path = write_tiny_smolvla(tmp_path / "tiny", pad_language_to=padding)
    vla = SmolVLA.from_pretrained(path)
    x = vla.preprocess([make_obs(i, instruction=t) for i, t in enumerate(TASKS)])
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tiny-vlm"))
    ref = hf([t if t.endswith("\n") else t + "\n" for t in TASKS], max_length=12, truncation=True, padding=padding,
             padding_side="right", return_tensors="pt")
    assert torch.equal(x["lang_tokens"], ref["input_ids"])
    assert torch.equal(x["lang_masks"], ref["attention_mask"].bool())
    assert x["lang_masks"][2].all() and not x["lang_masks"][0].all()  # truncated / padded


def test_images_resized_with_padding_on_the_left_and_top(smolvla_model):
    obs = make_obs(5)
    x = smolvla_model.preprocess([obs])["pixel_values"]
    assert x.shape == (1, 2, 3, 32, 32)
    top = torch.from_numpy(obs["images"]["top"]).permute(2, 0, 1)[None].float() / 255
    # 24 x 40 -> ratio 40 / 32 = 1.25 -> 19 x 32, then 13 rows of zero padding on top, then * 2 - 1
    resized = F.interpolate(top, size=(19, 32), mode="bilinear", align_corners=False)
    assert torch.all(x[0, 0, :, :13] == -1.0)
    assert torch.allclose(x[0, 0, :, 13:], resized[0] * 2 - 1, atol=1e-6)
    wrist = torch.from_numpy(obs["images"]["wrist"]).permute(2, 0, 1).float() / 255
    assert torch.allclose(x[0, 1], wrist * 2 - 1, atol=1e-6)  # already 32 x 32: unchanged


def test_state_and_actions_use_the_statistics_files(smolvla_dir, smolvla_model):
    pre = load_file(str(smolvla_dir / "policy_preprocessor_step_5_normalizer_processor.safetensors"))
    post = load_file(str(smolvla_dir / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))
    obs = make_obs(6)
    state = smolvla_model.preprocess([obs])["state"][0]
    expected = (torch.from_numpy(obs["state"]) - pre["observation.state.mean"]) / (pre["observation.state.std"] + 1e-8)
    assert torch.allclose(state[:5], expected, atol=1e-6) and torch.all(state[5:] == 0)  # padded to 8
    chunk = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    want = chunk * post["action.std"].numpy() + post["action.mean"].numpy()
    assert np.allclose(smolvla_model.unnormalize_actions(chunk), want, atol=1e-6)
    assert smolvla_model.processor.settings.normalizer.describe()["observation.state"] == "MEAN_STD"


def test_features_without_statistics_pass_through(tmp_path):
    """As lerobot/smolvla_base: no statistics for the features -> identity, and describe() says so."""
    vla = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "nostats", stats=False))
    obs = make_obs(1)
    assert torch.allclose(vla.preprocess([obs])["state"][0, :5], torch.from_numpy(obs["state"]))
    chunk = np.ones((5, 4), np.float32)
    assert np.array_equal(vla.unnormalize_actions(chunk), chunk)
    assert vla.processor.settings.unnormalizer.describe()["action"] == "IDENTITY (no MEAN_STD statistics)"


def test_select_action_serves_n_action_steps_per_chunk(smolvla_dir):
    vla = SmolVLA.from_pretrained(smolvla_dir)
    calls = []
    predict = vla.predict_chunk
    vla.predict_chunk = lambda inputs: calls.append(1) or predict(inputs)
    first = SmolVLA.from_pretrained(smolvla_dir).act(make_obs(0))  # same seeded noise stream
    assert first.shape == (3, 4)  # n_action_steps of the chunk of 5
    actions = [vla.select_action(make_obs(i)) for i in range(7)]
    assert len(calls) == 3  # steps 0, 3, 6 predict; the others pop the queue
    assert np.allclose(np.stack(actions[:3]), first, atol=1e-6)
    vla.reset()
    vla.select_action(make_obs(0))
    assert len(calls) == 4


def test_missing_cameras_and_empty_camera_slots(tmp_path):
    feats = {**TINY_POLICY["input_features"], "observation.images.side": {"type": "VISUAL", "shape": [3, 32, 32]}}
    vla = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "three", input_features=feats, empty_cameras=1))
    x = vla.preprocess([make_obs(0)])  # top and wrist given, side missing -> one empty slot
    assert x["pixel_values"].shape[1] == 3 and x["image_masks"].tolist() == [[True, True, False]]
    assert torch.all(x["pixel_values"][0, 2] == -1)
    with torch.no_grad():
        assert torch.isfinite(vla.predict_chunk(x)).all()
    x = vla.preprocess([make_obs(0, cameras=("wrist",))])  # one missing beyond empty_cameras: not padded
    assert x["pixel_values"].shape[1] == 2 and x["image_masks"].tolist() == [[True, False]]


def test_rename_map_accepts_the_robot_camera_names(smolvla_dir, copy_dir):
    path = copy_dir(smolvla_dir)
    pre = json.loads((path / "policy_preprocessor.json").read_text())
    pre["steps"][0]["config"]["rename_map"] = {"observation.images.front": "observation.images.top"}
    (path / "policy_preprocessor.json").write_text(json.dumps(pre))
    vla = SmolVLA.from_pretrained(path)
    obs = make_obs(2)
    renamed = {**obs, "images": {"front": obs["images"]["top"], "wrist": obs["images"]["wrist"]}}
    assert torch.equal(vla.preprocess([renamed])["pixel_values"], vla.preprocess([obs])["pixel_values"])


@pytest.mark.parametrize("obs, words", [
    ({**make_obs(0), "images": {"front": np.zeros((32, 32, 3), np.uint8)}}, "unknown camera"),
    ({**make_obs(0), "images": {}}, "no camera"),
    (make_obs(0, state_dim=None), "no 'state'"),
    (make_obs(0, state_dim=3), "3 values, expected 5"),
    ({**make_obs(0), "instruction": None}, "instruction"),
])
def test_bad_observations_are_clear_errors(smolvla_model, obs, words):
    with pytest.raises(ObservationError, match=words):
        smolvla_model.preprocess([obs])


def test_cameras_must_match_across_a_batch(smolvla_model):
    with pytest.raises(ObservationError, match="same cameras"):
        smolvla_model.preprocess([make_obs(0), make_obs(1, cameras=("top",))])
