"""DAgger collection: the policy's own states, labelled by MetaWorld's scripted expert."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress.data.collect import expert_episode
from vla_compress.data.dagger import collect_dagger
from vla_compress.data.lerobot import LeRobotDataset
from vla_compress.errors import ConfigError
from vla_compress.evaluate.metaworld_env import CameraSpec
from vla_compress.evaluate.rollout import PolicySpec
from vla_compress.evaluate.seeds import demo_seed


@pytest.fixture(scope="module")
def dagger_sets(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("dagger")
    spec = PolicySpec("torch", str(tiny_checkpoints["regression"]))
    out = {}
    for beta in (0.0, 1.0):
        out[beta] = collect_dagger(spec, root / f"beta{beta}", ("reach-v3",), 1, beta=beta, workers=1,
                                   image_size=32, max_steps=12)
    return out


def test_beta_one_follows_the_expert_exactly(dagger_sets):
    ep = next(LeRobotDataset(dagger_sets[1.0]).iter_episodes())
    expert = expert_episode("reach-v3", demo_seed("reach-v3", 500), CameraSpec("corner", 32), max_steps=12)
    assert ep.extras["seed"] == demo_seed("reach-v3", 500) and ep.extras["dagger"]["beta"] == 1.0
    assert ep.extras["dagger"]["expert_steps"] == len(ep) == len(expert) == 12
    np.testing.assert_allclose(ep.action, expert.action, atol=1e-6)
    np.testing.assert_allclose(ep.state, expert.state, atol=1e-6)
    assert np.array_equal(ep.images["corner"], expert.images["corner"])


def test_beta_zero_visits_the_policy_states_with_expert_labels(dagger_sets):
    ep = next(LeRobotDataset(dagger_sets[0.0]).iter_episodes())
    expert = expert_episode("reach-v3", demo_seed("reach-v3", 500), CameraSpec("corner", 32), max_steps=12)
    assert ep.extras["dagger"]["expert_steps"] == 0 and ep.extras["dagger"]["policy"].endswith("tiny-regression")
    assert len(ep) == 12 and ep.images["corner"].shape == (12, 32, 32, 3)
    # the first state is the same placement; after that the random policy drives the arm elsewhere
    np.testing.assert_allclose(ep.state[0], expert.state[0], atol=1e-6)
    assert np.abs(ep.state[-1] - expert.state[-1]).max() > 1e-3
    assert np.abs(ep.action).max() <= 1.0 and not np.allclose(ep.action, ep.action[0])


def test_training_reads_demos_and_dagger_episodes(dagger_sets):
    from vla_compress.train.bc import load_datasets, split_episodes

    data, meta, n_first = load_datasets([dagger_sets[1.0], dagger_sets[0.0]], ("corner",))
    assert n_first == 1 and len(meta) == 2 and [m["index"] for m in meta] == [0, 1]
    assert data.images.shape[:2] == (24, 1) and data.episode_of.tolist() == [0] * 12 + [1] * 12
    assert data.episode_end.tolist() == [12] * 12 + [24] * 12
    train, val = split_episodes(meta[:n_first], 1)
    assert val.tolist() == [0] and train.tolist() == []


def test_bad_settings_are_refused(tiny_checkpoints, tmp_path):
    spec = PolicySpec("torch", str(tiny_checkpoints["regression"]))
    with pytest.raises(ConfigError, match="beta must be in"):
        collect_dagger(spec, tmp_path / "x", ("reach-v3",), 1, beta=1.5)
    with pytest.raises(ConfigError, match="calibration/validation range"):
        collect_dagger(spec, tmp_path / "x", ("reach-v3",), 500, start_index=500)
    assert not (tmp_path / "x").exists()
