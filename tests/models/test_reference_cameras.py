"""Several cameras in the reference family: a third-person view and a wrist view go through the
same ViT, their visual tokens concatenated; pixel_values stacks them on the channel axis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_compress.errors import ConfigError, ObservationError
from vla_compress.models.reference import ReferenceVLA
from vla_compress.models.reference.configuration_reference import PRESETS, ReferenceConfig

CAMS = ("corner", "gripperPOV")


def two_camera_obs(seed: int, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMS},
            "state": rng.uniform(-0.2, 0.8, 4).astype(np.float32), "instruction": "push the puck to the goal"}


@pytest.fixture(scope="module")
def two_cam() -> ReferenceVLA:
    return ReferenceVLA.tiny(cameras=CAMS, token_merge=2)


def test_training_config_adds_the_wrist_camera_to_the_preset():
    from dataclasses import replace

    cfg = PRESETS["reference-small"]
    assert cfg.vision.cameras == ("corner",) and cfg.visual_tokens == 16
    assert replace(cfg, vision=replace(cfg.vision, cameras=CAMS)).visual_tokens == 2 * 16


def test_inputs_stack_cameras_and_tokens_concatenate(two_cam):
    inputs = two_cam.preprocess([two_camera_obs(0), two_camera_obs(1)])
    assert inputs["pixel_values"].shape == (2, 6, 32, 32)
    one = ReferenceVLA.tiny(token_merge=2)  # same seed, same weights, one camera
    with torch.no_grad():
        both = two_cam.visual_tokens(inputs["pixel_values"])
        first = one.visual_tokens(inputs["pixel_values"][:, :3])
        second = one.visual_tokens(inputs["pixel_values"][:, 3:])
    assert both.shape == (2, 8, 64) and two_cam.token_counts().visual == 8
    torch.testing.assert_close(both, torch.cat([first, second], 1))


def test_every_camera_changes_the_action(two_cam):
    obs = two_camera_obs(0)
    base = two_cam.act(obs)
    for cam in CAMS:
        other = dict(obs, images={**obs["images"], cam: two_camera_obs(5)["images"][cam]})
        assert not np.allclose(two_cam.act(other), base), cam


def test_save_load_round_trip_is_bit_identical(two_cam, tmp_path):
    path = two_cam.save_pretrained(tmp_path / "two-cam")
    assert json.loads((path / "config.json").read_text())["vision"]["cameras"] == list(CAMS)
    loaded = ReferenceVLA.from_pretrained(path)
    assert loaded.cfg == two_cam.cfg
    assert np.array_equal(loaded.act(two_camera_obs(3)), two_cam.act(two_camera_obs(3)))


def test_missing_or_mismatched_camera_is_refused(two_cam):
    obs = two_camera_obs(0)
    with pytest.raises(ObservationError, match=r"no image from camera\(s\) \['gripperPOV'\]"):
        two_cam.act(dict(obs, images={"corner": obs["images"]["corner"]}))
    with pytest.raises(ObservationError, match="must share a shape"):
        two_cam.act(dict(obs, images={**obs["images"], "gripperPOV": np.zeros((16, 16, 3), np.uint8)}))


def test_single_camera_checkpoints_of_format_1_still_load():
    d = ReferenceVLA.tiny().cfg.to_dict()
    d["vision"].pop("cameras")
    d["vision"]["camera"] = "corner"  # how config.json named its one camera before
    assert ReferenceConfig.from_dict(d).vision.cameras == ("corner",)
    d["vision"]["cameras"] = ["corner"]
    with pytest.raises(ConfigError, match="both 'camera' and 'cameras'"):
        ReferenceConfig.from_dict(d)
    d["vision"].pop("camera")
    d["vision"]["cameras"] = ["corner", "corner"]
    with pytest.raises(ConfigError, match="distinct"):
        ReferenceConfig.from_dict(d)


def test_training_frames_stack_the_model_cameras(tmp_path):
    from vla_compress.data.lerobot import Episode, LeRobotWriter
    from vla_compress.train.bc import frame_batch, load_frames

    rng = np.random.default_rng(0)
    w = LeRobotWriter(tmp_path / "ds", fps=80, robot_type="sawyer")
    imgs = {c: rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8) for c in (*CAMS, "topview")}
    w.add(Episode(task="push the puck", images=imgs, state=rng.normal(size=(5, 4)).astype(np.float32),
                  action=rng.normal(size=(5, 4)).astype(np.float32)))
    w.close()
    data, _ = load_frames(tmp_path / "ds", CAMS)
    assert data.images.shape == (5, 2, 32, 32, 3)
    assert np.array_equal(data.images[:, 1], imgs["gripperPOV"])
    vla = ReferenceVLA.tiny(cameras=CAMS)
    norm = vla.action_norm.normalize(data.actions)
    px, *_ = frame_batch(vla.processor, data, norm, vla.state_norm, np.arange(3), 2, shift_px=2,
                         rng=np.random.RandomState(0))
    assert px.shape == (3, 6, 32, 32)
    with pytest.raises(ValueError, match=r"no camera\(s\) \['wrist'\]"):
        load_frames(tmp_path / "ds", ("corner", "wrist"))


def test_token_passes_count_every_camera(tmp_path):
    from tests.passes.conftest import context_for
    from vla_compress.passes import apply_passes
    from vla_compress.passes.tokens import TokenMergeConfig, VisualTokenPruneConfig

    vla = ReferenceVLA.tiny(cameras=CAMS)  # 16 patches per camera, no pixel unshuffle
    apply_passes(vla, [TokenMergeConfig(ratio=0.5, mode="reduce")])
    assert vla.token_counts().visual == 2 * 8
    with torch.no_grad():
        assert vla.visual_tokens(vla.preprocess([two_camera_obs(0)])["pixel_values"]).shape[1] == 16

    vla = ReferenceVLA.tiny(cameras=CAMS)
    apply_passes(vla, [VisualTokenPruneConfig(budget=6, layer=1)], context_for(vla))
    assert vla.token_counts().visual == 6 and int(vla.visual_keep.max()) < 32
    loaded = ReferenceVLA.from_pretrained(vla.save_pretrained(tmp_path / "pruned"))
    assert np.array_equal(loaded.act(two_camera_obs(2)), vla.act(two_camera_obs(2)))


def test_onnx_export_of_two_cameras_matches_torch(two_cam, tmp_path):
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    obs = [two_camera_obs(i) for i in range(4)]
    art = export(two_cam, OnnxExportConfig(), tmp_path / "onnx", example=obs[:2])
    validate(art, two_cam, obs)
    assert art.manifest["status"] == "ok"
    policy = OnnxRuntimePolicy(art.path)
    np.testing.assert_allclose(policy.infer(obs[3]), two_cam.act(obs[3]), atol=1e-4)


def test_rollout_workers_render_the_cameras_the_policy_reads(two_cam):
    from vla_compress.evaluate.metaworld_env import cameras_read_by
    from vla_compress.runtime.policy import TorchPolicy

    assert cameras_read_by(TorchPolicy(two_cam)) == CAMS == cameras_read_by(two_cam)
    assert cameras_read_by(object()) is None
