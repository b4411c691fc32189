"""The `lerobot-metaworld` suite against the conventions read from LeRobot 0.6's source
(src/lerobot/envs/metaworld.py, envs/configs.py, envs/metaworld_config.json, scripts/lerobot_eval.py;
docs/notes/lerobot-metaworld-libero.md gives the lines): camera, render size, flip, state slice,
episode length, seeds, instructions, and the feature mapping from the policy's declared cameras."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate import lerobot_metaworld as lm
from vla_compress.evaluate.rollout import PolicySpec, evaluate
from vla_compress.evaluate.suites import get_suite

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker")]


def test_constants_are_lerobots():
    # metaworld.py: camera_name="corner2"; `env.model.cam_pos[2] = [0.75, 0.075, 0.7]`; MetaWorld's
    # SawyerXYZEnv width/height 480 (LeRobot passes none); `self._max_episode_steps = 500`;
    # eval.py `seed: int = 1000` with episode j of every task at start_seed + j
    assert (lm.CAMERA, lm.CAMERA_POS, lm.SIZE, lm.MAX_STEPS, lm.MT1_SEED) == ("corner2", (0.75, 0.075, 0.7), 480, 500, 42)
    suite = get_suite("lerobot-metaworld")
    assert suite.seeds("reach-v3", 3) == [1000, 1001, 1002] == suite.seeds("window-close-v3", 3)
    assert suite.seeds("push-v3", 2, first=5) == [1005, 1006]
    # metaworld_config.json TASK_DESCRIPTIONS (quoted in the notes) for MT10, no trailing period
    assert lm.TASK_DESCRIPTIONS["push-v3"] == "Push the puck to a goal"
    assert lm.TASK_DESCRIPTIONS["door-open-v3"] == "Open a door with a revolving joint"
    assert set(lm.TASK_DESCRIPTIONS) == set(suite.tasks) and len(suite.tasks) == 10


@pytest.fixture(scope="module")
def env_at_reset():
    env = lm.LeRobotMetaWorldEnv("reach-v3", "camera1")
    obs, raw = env.reset(1000)
    frame = obs["images"]["camera1"]
    yield env, obs, raw, frame
    env.close()


def test_observation_is_lerobots(env_at_reset):
    import mujoco

    env, obs, raw, frame = env_at_reset
    assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8
    # the 180-degree flip of Gymnasium's upright rgb_array (np.flip(image, (0, 1)))
    assert np.array_equal(frame, np.flip(env._env.render(), (0, 1)))
    model = env._env.model
    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
    assert cam == 2 and np.allclose(model.cam_pos[cam], (0.75, 0.075, 0.7))
    assert env._env.camera_name == "corner2" and env._env.max_path_length == 500
    np.testing.assert_array_equal(obs["state"], raw[:4].astype(np.float32))  # agent_pos = raw_obs[:4]
    assert obs["instruction"] == "Reach a goal position"
    assert list(obs["images"]) == ["camera1"]


def test_seed_places_objects_as_lerobot_does(env_at_reset):
    _, _, raw, _ = env_at_reset
    again, _ = lm.LeRobotMetaWorldEnv("reach-v3").reset(1000)
    other = lm.LeRobotMetaWorldEnv("reach-v3")
    _, raw_other = other.reset(1001)
    same = lm.LeRobotMetaWorldEnv("reach-v3")
    _, raw_same = same.reset(1000)
    assert np.array_equal(raw, raw_same) and not np.allclose(raw[36:39], raw_other[36:39])  # the goal moves
    for e in (other, same):
        e.close()


def test_episode_ends_at_success_or_the_step_limit():
    env = lm.LeRobotMetaWorldEnv("reach-v3", max_steps=3)
    env.reset(1002)
    done = [env.step(np.zeros(4))[3] for _ in range(3)]
    assert done == [False, False, True]
    env.close()
    with pytest.raises(ConfigError, match=r"max_steps must be in \[1, 500\]"):
        lm.LeRobotMetaWorldEnv("reach-v3", max_steps=501)
    with pytest.raises(ConfigError, match="no LeRobot task description for 'assembly-v3'"):
        lm.LeRobotMetaWorldEnv("assembly-v3")


def test_the_frame_goes_to_the_policys_one_camera():
    assert lm.camera_key_for(None) == "image"
    assert lm.camera_key_for(("camera1", "empty_camera_0", "empty_camera_1")) == "camera1"
    with pytest.raises(ConfigError, match="renders one camera .corner2.*the policy reads 2: top, wrist"):
        lm.camera_key_for(("top", "wrist"))

    class Processor:  # an artifact processor names its cameras (SmolVLA's: placeholders included)
        cameras = ("camera1", "empty_camera_0")

    class Policy:
        processor = Processor()

    assert lm.policy_cameras(Policy()) == ("camera1", "empty_camera_0")


def test_evaluate_on_the_suite_records_its_facts(tiny_checkpoints):
    result = evaluate(PolicySpec("torch", str(tiny_checkpoints["regression"])), "lerobot-metaworld",
                      tasks=["reach-v3"], episodes=1, workers=1, threads_per_worker=1, max_steps=4)
    ep = result["episodes"][0]
    assert (ep["task"], ep["seed"], ep["steps"]) == ("reach-v3", 1000, 4)
    facts = result["suite_facts"]
    assert facts["name"] == "lerobot-metaworld" and facts["package"] == "metaworld"
    assert facts["conventions"]["camera"] == "corner2" and facts["conventions"]["max_steps"] == 500
    assert get_suite("metaworld-mt10").describe()["fidelity"].startswith("the project's own")


def test_a_smolvla_artifact_maps_its_one_camera(tmp_path):
    # LeRobot's MetaWorld SmolVLA: one camera (camera1) and two placeholder cameras; the artifact
    # runtime names them from its own files, so the frame goes to camera1
    from vla_compress.export import export
    from vla_compress.export.onnx import OnnxExportConfig
    from vla_compress.models import load_vla
    from vla_compress.models.smolvla.fixtures import write_tiny_smolvla
    from vla_compress.runtime.onnxruntime_policy import OnnxRuntimePolicy

    feats = {"observation.state": {"type": "STATE", "shape": [4]},
             "observation.images.camera1": {"type": "VISUAL", "shape": [3, 32, 32]}}
    vla = load_vla(write_tiny_smolvla(tmp_path / "ckpt", dtype="float32", empty_cameras=2, input_features=feats))
    obs = vla.dummy_observation()
    assert list(obs["images"]) == ["camera1"]
    art = export(vla, OnnxExportConfig(), tmp_path / "onnx", example=[obs, obs])
    cams = lm.policy_cameras(OnnxRuntimePolicy(art.path, allow_failed=True))
    assert cams == ("camera1", "empty_camera_0", "empty_camera_1") and lm.camera_key_for(cams) == "camera1"
