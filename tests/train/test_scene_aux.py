"""The auxiliary scene loss: object/goal positions recovered by replaying demonstrations, and a
training run that uses them without changing what the checkpoint holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_compress.data.collect import expert_episode
from vla_compress.data.lerobot import LeRobotWriter
from vla_compress.evaluate.metaworld_env import CameraSpec, make_gym_env
from vla_compress.evaluate.seeds import demo_seed
from vla_compress.train.scene import SCENE_DIM, replay_scene, scene_targets

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker"),
    pytest.mark.filterwarnings("ignore::UserWarning:metaworld.policies.policy"),
]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Two 20-step expert episodes of push-v3 (the object moves), 128x128, in a LeRobot dataset."""
    root = tmp_path_factory.mktemp("scene") / "demos"
    eps = [expert_episode("push-v3", demo_seed("push-v3", i), CameraSpec("corner", 128), max_steps=20) for i in (0, 1)]
    w = LeRobotWriter(root, fps=80)
    for ep in eps:
        w.add(ep)
    return w.close(), eps


def test_replay_recovers_object_and_goal_positions(demos):
    _, (ep, _) = demos
    seed = ep.extras["seed"]
    pos = replay_scene("push-v3", seed, ep.action, ep.state)
    assert pos.shape == (len(ep), SCENE_DIM)
    env = make_gym_env("push-v3", seed)
    raw, _ = env.reset(seed=seed)
    env.close()
    np.testing.assert_allclose(pos[0], np.concatenate([raw[4:7], raw[36:39]]), atol=1e-6)
    assert np.ptp(pos[:, 3:], axis=0).max() < 1e-6  # the goal stays put
    # a replay that does not reproduce the recorded proprio gives no target
    assert replay_scene("push-v3", seed, -ep.action, ep.state) is None
    # the targets follow the recorded placement seed (the hand alone cannot tell placements apart)
    other = replay_scene("push-v3", seed + 1, ep.action, ep.state)
    assert other is not None and np.abs(other[0] - pos[0]).max() > 1e-3


def test_scene_targets_skip_episodes_that_cannot_be_replayed(demos):
    _, eps = demos
    actions = np.concatenate([e.action for e in eps])
    states = np.concatenate([e.state for e in eps])
    episode_of = np.repeat([0, 1], [len(e) for e in eps])
    meta = [{"env_task": "push-v3", "seed": e.extras["seed"]} for e in eps]
    targets, mask = scene_targets(meta, episode_of, actions, states, np.array([True, False]), workers=1, log=lambda m: None)
    assert mask.tolist() == [True] * len(eps[0]) + [False] * len(eps[1])
    assert np.all(targets[~mask] == 0) and np.abs(targets[mask]).sum() > 0


def test_training_with_the_aux_loss_saves_a_plain_checkpoint(demos, tmp_path):
    from safetensors import safe_open

    from vla_compress.models import load_vla
    from vla_compress.train.bc import TrainConfig, train

    root, _ = demos
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1, val_episodes_per_task=1, aux_scene=1.0, state_noise=0.1, threads=1)
    out = train(root, tmp_path / "ckpt", cfg, log=lambda m: None)
    info = json.loads((out / "training.json").read_text())
    assert info["config"]["aux_scene"] == 1.0 and info["config"]["state_noise"] == 0.1
    assert np.isfinite(info["history"][-1]["val_aux_scene"])
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    vla = load_vla(out)
    assert keys == set(vla.state_dict()) and not any("aux" in k or k.startswith("head.") for k in keys)


def test_negative_aux_weight_is_refused(demos, tmp_path):
    from vla_compress.train.bc import TrainConfig, train

    from vla_compress.errors import ConfigError

    with pytest.raises(ConfigError, match="aux_scene and state_noise must be >= 0"):
        train(demos[0], tmp_path / "x", TrainConfig(steps=1, aux_scene=-1.0), log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_aux_loss_without_replayable_demonstrations_names_the_dataset(demos, tmp_path):
    from dataclasses import replace

    from vla_compress.errors import DatasetError
    from vla_compress.train.bc import TrainConfig, train

    root = tmp_path / "no-seeds"
    w = LeRobotWriter(root, fps=80)
    for ep in demos[1]:
        w.add(replace(ep, extras={"env_task": "push-v3"}))  # no recorded seed: nothing to replay
    w.close()
    with pytest.raises(DatasetError, match=f"{root}: --aux-scene needs demonstrations that replay"):
        train(root, tmp_path / "out", TrainConfig(steps=1, batch_size=4, val_episodes_per_task=1, aux_scene=1.0),
              log=lambda m: None)
    assert not (tmp_path / "out").exists()
