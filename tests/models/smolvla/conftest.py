"""Tiny SmolVLA checkpoints in LeRobot's layout (with their tiny SmolVLM directories), and
observations for them. Session-scoped and shared: copy a directory before corrupting it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_compress.models.smolvla.fixtures import write_tiny_smolvla

# the fixture's cameras: "top" is 24 x 40 (resized with padding to 32 x 32), "wrist" 32 x 32
CAMERA_SHAPES = {"top": (24, 40), "wrist": (32, 32)}


@pytest.fixture(scope="session")
def smolvla_dir(tmp_path_factory) -> Path:
    return write_tiny_smolvla(tmp_path_factory.mktemp("smolvla") / "tiny-smolvla", seed=0)


@pytest.fixture(scope="session")
def smolvla_model(smolvla_dir):
    from vla_compress.models.smolvla import SmolVLA

    return SmolVLA.from_pretrained(smolvla_dir)


@pytest.fixture
def copy_dir(tmp_path):
    """copy(src) -> a private copy of a checkpoint directory (its VLM directory stays shared)."""
    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy


def make_obs(seed: int = 0, cameras=("top", "wrist"), state_dim: int | None = 5,
             instruction: str = "Pick up the cube and put it in the bowl") -> dict:
    rng = np.random.default_rng(seed)
    obs = {"images": {c: rng.integers(0, 256, (*CAMERA_SHAPES.get(c, (32, 32)), 3), dtype=np.uint8) for c in cameras},
           "instruction": instruction}
    if state_dim:
        obs["state"] = rng.uniform(-1.0, 1.0, state_dim).astype(np.float32)
    return obs
