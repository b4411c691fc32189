"""SmolVLA checkpoints as LeRobot 0.6's own save_pretrained writes them with its defaults: the task
padded to the longest in the batch, bf16 storage, empty cameras (declared as
`observation.images.empty_camera_<i>`, never observed), every normalisation mode (images included),
the normalizer's `normalize_observation_keys`, a fixed `prefix_length`; and ONNX exports of them
with parity against torch, through the artifact's own processor.

Image normalisation is checked against a float64 re-computation of LeRobot's preprocessor +
prepare_images: uint8 / 255 -> per-channel (x - mean) / (std + eps) (or the min/max, quantile
forms) at the camera's resolution -> bilinear resize keeping the aspect ratio, zero padding on the
left and top -> x * 2 - 1.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vla_compress.errors import CheckpointError
from vla_compress.models.smolvla import SmolVLA
from vla_compress.models.smolvla.fixtures import LEROBOT_DEFAULTS, write_tiny_smolvla

from .conftest import make_obs

torch.set_num_threads(1)
PRE_STATS = "policy_preprocessor_step_5_normalizer_processor.safetensors"
POST_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
EPS = 1e-8
BOUNDS = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}


# ------------------------------------------------------------------------------- float64 reference
def ref_normalize(x: torch.Tensor, stats: dict, key: str, mode: str) -> torch.Tensor:
    """LeRobot's NormalizerProcessorStep formulas, in float64."""
    if mode == "IDENTITY":
        return x
    if mode == "MEAN_STD":
        return (x - stats[f"{key}.mean"].double()) / (stats[f"{key}.std"].double() + EPS)
    lo, hi = (stats[f"{key}.{s}"].double() for s in BOUNDS[mode])
    return 2 * (x - lo) / (hi - lo) - 1


def ref_unnormalize(x: torch.Tensor, stats: dict, key: str, mode: str) -> torch.Tensor:
    if mode == "IDENTITY":
        return x
    if mode == "MEAN_STD":
        return x * stats[f"{key}.std"].double() + stats[f"{key}.mean"].double()
    lo, hi = (stats[f"{key}.{s}"].double() for s in BOUNDS[mode])
    return (x + 1) / 2 * (hi - lo) + lo


def ref_pixels(image: np.ndarray, stats: dict, key: str, mode: str, side: int = 32) -> torch.Tensor:
    """One HxWx3 uint8 camera image -> the (3, side, side) SigLIP input, in float64."""
    x = torch.from_numpy(image).double().permute(2, 0, 1)[None] / 255.0
    x = ref_normalize(x, stats, key, mode)
    h, w = x.shape[-2:]
    if (h, w) != (side, side):
        ratio = max(w / side, h / side)
        rh, rw = int(h / ratio), int(w / ratio)
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
        x = F.pad(x, (side - rw, 0, side - rh, 0), value=0.0)
    return (x * 2.0 - 1.0)[0]


# ------------------------------------------------------------------------------------ processor
@pytest.mark.parametrize("mode", ["IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10"])
def test_every_mode_normalises_images_state_and_actions_as_lerobot(tmp_path, mode):
    path = write_tiny_smolvla(tmp_path / mode, normalization=mode, **LEROBOT_DEFAULTS)
    vla = SmolVLA.from_pretrained(path)
    pre, post = load_file(str(path / PRE_STATS)), load_file(str(path / POST_STATS))
    obs = [make_obs(3), make_obs(4, instruction="push the button")]
    x = vla.preprocess(obs)
    for i, o in enumerate(obs):
        for c, cam in enumerate(("top", "wrist")):
            want = ref_pixels(o["images"][cam], pre, f"observation.images.{cam}", mode)
            err = (x["pixel_values"][i, c].double() - want).abs().max().item()
            assert err < 2e-5, (cam, err)
        state = ref_normalize(torch.from_numpy(o["state"]).double(), pre, "observation.state", mode)
        assert torch.allclose(x["state"][i, :5].double(), state, atol=1e-5)
    if mode != "IDENTITY":  # the images really changed: not the [0, 1] -> [-1, 1] map alone
        plain = torch.from_numpy(obs[0]["images"]["wrist"]).double().permute(2, 0, 1) / 255 * 2 - 1
        assert (x["pixel_values"][0, 1].double() - plain).abs().max() > 0.1
    chunk = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    want = ref_unnormalize(torch.from_numpy(chunk).double(), post, "action", mode)
    assert np.allclose(vla.unnormalize_actions(chunk), want.numpy(), atol=1e-5)
    described = vla.processor.settings.normalizer.describe()
    assert described["observation.images.top"] == described["observation.state"] == described["action"] == mode


def test_mean_std_images_are_bit_identical_to_lerobots_float32_order(tmp_path):
    """LeRobot's order in float32: / 255, (x - mean) / (std + eps) at camera resolution, resize, * 2 - 1."""
    path = write_tiny_smolvla(tmp_path / "ms", normalization={"VISUAL": "MEAN_STD"})
    pre = load_file(str(path / PRE_STATS))
    obs = make_obs(8)
    got = SmolVLA.from_pretrained(path).preprocess([obs])["pixel_values"][0]
    for c, cam in enumerate(("top", "wrist")):
        img = torch.from_numpy(obs["images"][cam]).type(torch.float32).permute(2, 0, 1)[None] / 255
        img = (img - pre[f"observation.images.{cam}.mean"]) / (pre[f"observation.images.{cam}.std"] + EPS)
        if cam == "top":  # 24 x 40 -> 19 x 32, 13 rows of zero padding on top
            img = F.pad(F.interpolate(img, size=(19, 32), mode="bilinear", align_corners=False), (0, 0, 13, 0))
        assert torch.equal(got[c], (img * 2.0 - 1.0)[0]), cam


def test_per_channel_image_statistics_of_shape_c(tmp_path):
    """Image statistics stored as (C,) act per channel, as LeRobot's _reshape_visual_stats makes them."""
    path = write_tiny_smolvla(tmp_path / "flat", normalization={"VISUAL": "MEAN_STD"})
    want = SmolVLA.from_pretrained(path).preprocess([make_obs(2)])["pixel_values"]
    stats = load_file(str(path / PRE_STATS))
    save_file({k: v.reshape(-1) if k.startswith("observation.images.") else v for k, v in stats.items()},
              str(path / PRE_STATS))
    assert torch.equal(SmolVLA.from_pretrained(path).preprocess([make_obs(2)])["pixel_values"], want)


def test_image_statistics_that_do_not_fit_are_a_clear_error(tmp_path):
    path = write_tiny_smolvla(tmp_path / "bad", normalization={"VISUAL": "MEAN_STD"})
    stats = load_file(str(path / PRE_STATS))
    stats["observation.images.top.mean"] = torch.zeros(4, 1, 1)
    save_file(stats, str(path / PRE_STATS))
    with pytest.raises(CheckpointError, match="observation.images.top"):
        SmolVLA.from_pretrained(path).preprocess([make_obs(0)])


def test_normalize_observation_keys_limits_what_is_normalised(tmp_path):
    """Only the listed observation features are normalised; the action is unnormalised either way."""
    full = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "all", normalization="MEAN_STD"))
    only = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "some", normalization="MEAN_STD",
                                                      normalize_observation_keys=["observation.images.wrist"]))
    pre = json.loads((tmp_path / "some" / "policy_preprocessor.json").read_text())
    assert pre["steps"][-1]["config"]["normalize_observation_keys"] == ["observation.images.wrist"]
    obs = make_obs(5)
    a, b = full.preprocess([obs]), only.preprocess([obs])
    assert torch.equal(b["pixel_values"][:, 1], a["pixel_values"][:, 1])  # wrist: listed, normalised
    plain = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "none", stats=False)).preprocess([obs])
    assert torch.equal(b["pixel_values"][:, 0], plain["pixel_values"][:, 0])  # top: left as is
    assert torch.equal(b["state"], plain["state"])  # state: not listed
    described = only.processor.settings.normalizer.describe()
    assert described["observation.state"] == "IDENTITY (not in normalize_observation_keys)"
    assert described["observation.images.wrist"] == "MEAN_STD" and described["action"] == "MEAN_STD"
    chunk = np.ones((5, 4), np.float32)
    assert np.array_equal(only.unnormalize_actions(chunk), full.unnormalize_actions(chunk))
    assert not np.array_equal(only.unnormalize_actions(chunk), chunk)


def test_empty_cameras_as_lerobot_declares_them(tmp_path):
    """empty_cameras: 1 declares observation.images.empty_camera_0 (3 x 480 x 640), which no
    observation has: an all -1 slot with a false mask, and no statistics for it."""
    path = write_tiny_smolvla(tmp_path / "empty", empty_cameras=1, normalization={"VISUAL": "MEAN_STD"},
                              **LEROBOT_DEFAULTS)
    vla = SmolVLA.from_pretrained(path)
    assert sorted(vla.cfg.cameras) == ["empty_camera_0", "top", "wrist"]
    assert "observation.images.empty_camera_0.mean" not in load_file(str(path / PRE_STATS))
    obs = vla.dummy_observation()
    assert sorted(obs["images"]) == ["top", "wrist"]
    x = vla.preprocess([make_obs(1, instruction="push the button"), make_obs(2, instruction="open the drawer")])
    assert x["pixel_values"].shape[1] == 3 and x["image_masks"].tolist() == [[True, True, False]] * 2
    assert torch.all(x["pixel_values"][:, 2] == -1)
    assert not x["lang_masks"].all() and x["lang_tokens"].shape[1] < 12  # padded to the longest task only


@pytest.mark.parametrize("dtype, stored", [("mixed", {torch.bfloat16, torch.float32}), ("bfloat16", {torch.bfloat16})])
def test_bf16_storage_loads_in_float32(tmp_path, dtype, stored):
    path = write_tiny_smolvla(tmp_path / dtype, dtype=dtype)
    tensors = load_file(str(path / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == stored
    vla = SmolVLA.from_pretrained(path)
    assert {p.dtype for p in vla.parameters()} == {torch.float32}
    name = "model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(vla.backbone.layers[0].mlp.up_proj.weight, tensors[name].float())


def test_video_preprocessor_config_is_carried(tmp_path):
    vla = SmolVLA.from_pretrained(write_tiny_smolvla(tmp_path / "tiny"))
    out = vla.save_pretrained(tmp_path / "saved")
    assert ((out / "vlm" / "video_preprocessor_config.json").read_bytes()
            == (tmp_path / "tiny-vlm" / "video_preprocessor_config.json").read_bytes())


# ----------------------------------------------------------------------------------------- ONNX
EXPORTS = {
    # LeRobot's defaults: longest padding, bf16 + f32 storage, an empty camera; images MEAN_STD
    "lerobot-defaults": dict(empty_cameras=1, normalization={"VISUAL": "MEAN_STD"}, **LEROBOT_DEFAULTS),
    # a fixed prefix longer than the prefix (zero padding), every feature MIN_MAX, bf16 storage
    "prefix-min-max": dict(prefix_length=40, normalization="MIN_MAX", dtype="bfloat16",
                           pad_language_to="longest"),
    # quantiles everywhere, max_length text, only some observation features normalised
    "quantiles-keys": dict(normalization="QUANTILES",
                           normalize_observation_keys=["observation.images.top", "observation.state"]),
}


@pytest.fixture(scope="module", params=sorted(EXPORTS))
def exported(request, tmp_path_factory):
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.models.smolvla.export_smolvla import _examples

    root = tmp_path_factory.mktemp(request.param)
    vla = SmolVLA.from_pretrained(write_tiny_smolvla(root / "ckpt", seed=2, num_steps=2, **EXPORTS[request.param]))
    observations = _examples(vla, 4)
    art = export(vla, OnnxExportConfig(), root / "onnx", example=observations[:2])
    report = validate(art, vla, observations)
    return request.param, vla, art, report


def test_onnx_export_has_parity_under_lerobot_defaults(exported):
    name, vla, art, report = exported
    assert art.manifest["status"] == "ok" and report.passed, report.summary()
    assert report.max_abs < 1e-4 and report.cosine > 0.99999
    assert (art.path / "vlm" / "video_preprocessor_config.json").is_file()
    inputs = art.manifest["io"]["policy_step"]["inputs"]
    text_axis = next(i for i in inputs if i["name"] == "lang_tokens")["shape"][1]
    assert text_axis == (12 if vla.cfg.pad_language_to == "max_length" else "text")


def test_artifact_processor_feeds_what_torch_preprocesses(exported):
    """The artifact's processor (rebuilt from its files) normalises images, state and actions alike."""
    from vla_compress.models.smolvla.export_smolvla import SmolVLAArtifactProcessor

    name, vla, art, _ = exported
    processor = SmolVLAArtifactProcessor(art.path)
    obs = [make_obs(30), make_obs(31, instruction="open the drawer")]
    feeds, want = processor(obs), vla.preprocess(obs)
    for k, v in want.items():
        assert np.array_equal(feeds[k], v.numpy()), k
    chunk = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    assert np.array_equal(processor.unnormalize(chunk), vla.unnormalize_actions(chunk)[:3])


def test_onnx_policy_acts_like_torch_with_fewer_cameras(exported):
    """Robot-unit actions from the ONNX Runtime policy and the torch policy, all cameras and one
    missing (a shorter prefix: the dynamic camera axis with prefix_length padding)."""
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy
    from vla_compress.runtime.policy import TorchPolicy

    name, vla, art, _ = exported
    for cameras in (("top", "wrist"), ("wrist",)):
        onnx_policy, torch_policy = OnnxRuntimePolicy(art.path), TorchPolicy(copy.deepcopy(vla))
        torch_policy.vla.noise_generator.manual_seed(vla.noise_seed)
        obs = make_obs(40, cameras=cameras, instruction="push the button")
        assert np.allclose(onnx_policy.act(obs), torch_policy.act(obs), atol=1e-4), cameras
