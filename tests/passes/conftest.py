"""Fixtures for the pass tests: fresh (mutable) tiny models, calibration contexts, a tiny LeRobot set."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from vla_compress.passes import PassContext, calibration_dataset, synthetic_observations


def deep_reference(head: str, seed: int = 0):
    """Tiny, but with 4 backbone / 3 vision layers so layer dropping has choices."""
    from vla_compress.models.reference import ReferenceConfig, ReferenceVLA
    from vla_compress.models.reference.configuration_reference import BackboneConfig, VisionConfig

    cfg = ReferenceConfig(
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=3,
                            num_heads=2),
        backbone=BackboneConfig(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2),
        head=head, chunk_size=2, preset="tiny-deep")
    return ReferenceVLA.build(cfg, seed=seed)


@pytest.fixture(scope="session")
def deep_models() -> dict:
    return {head: deep_reference(head) for head in ("regression", "tokens")}


@pytest.fixture
def fresh(tiny_models, deep_models):
    """fresh(head, deep=False) -> a private copy of a tiny reference model (passes mutate models)."""
    return lambda head, deep=False: copy.deepcopy((deep_models if deep else tiny_models)[head])


def context_for(vla, n: int = 4, batch_size: int = 1, seed: int = 0) -> PassContext:
    return PassContext(calibration=calibration_dataset(vla, synthetic_observations(vla, n, seed=seed), batch_size),
                       seed=seed)


@pytest.fixture(scope="session")
def openvla_model():
    from vla_compress.models.openvla.adapter import OpenVLA

    return OpenVLA.tiny(seed=0)


def write_lerobot(root, episodes_per_task: int, frames: int, seed: int):
    """A LeRobot dataset of random 32x32 frames, 4-d states/actions, on two tasks."""
    from vla_compress.data.lerobot import Episode, LeRobotWriter

    w = LeRobotWriter(root, fps=10)
    rng = np.random.default_rng(seed)
    for task in ("reach to the target location", "open the door"):
        for _ in range(episodes_per_task):
            w.add(Episode(task=task, images={"corner": rng.integers(0, 256, (frames, 32, 32, 3), dtype=np.uint8)},
                          state=rng.uniform(-1, 1, (frames, 4)).astype(np.float32),
                          action=rng.uniform(-1, 1, (frames, 4)).astype(np.float32)))
    return w.close()


@pytest.fixture(scope="session")
def lerobot_dir(tmp_path_factory):
    return write_lerobot(tmp_path_factory.mktemp("lerobot") / "tiny", episodes_per_task=1, frames=5, seed=0)


@pytest.fixture(scope="session")
def lerobot_train_dir(tmp_path_factory):
    """2 tasks x 3 episodes x 6 frames: enough to hold one episode per task out."""
    return write_lerobot(tmp_path_factory.mktemp("lerobot") / "train", episodes_per_task=3, frames=6, seed=1)
