"""Tiny π0 / π0.5 checkpoints in LeRobot's layout (with their tiny tokenizer folders), and
observations for them. Session-scoped and shared: copy a directory before corrupting it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_compress.models.pi0.fixtures import write_tiny_pi0

# the fixture's cameras: "base_0_rgb" is 24 x 40 (resized with centred padding to 16 x 16), "wrist" 16 x 16
CAMERA_SHAPES = {"base_0_rgb": (24, 40), "wrist": (16, 16)}


@pytest.fixture(scope="session")
def pi0_dirs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(kind, storage) -> checkpoint directory, for kind pi0 / pi05 and storage mixed (bf16) / float32."""
    root = tmp_path_factory.mktemp("pi0")
    return {(k, d): write_tiny_pi0(root / f"tiny-{k}-{d}", seed=0 if k == "pi0" else 1, kind=k, dtype=d)
            for k in ("pi0", "pi05") for d in ("mixed", "float32")}


@pytest.fixture
def copy_dir(tmp_path):
    """copy(src) -> a private copy of a checkpoint directory (its tokenizer folder stays shared)."""
    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy


def make_obs(seed: int = 0, cameras=("base_0_rgb", "wrist"), state_dim: int = 5,
             instruction: str = "Pick up the cube and put it in the bowl") -> dict:
    rng = np.random.default_rng(seed)
    return {"images": {c: rng.integers(0, 256, (*CAMERA_SHAPES[c], 3), dtype=np.uint8) for c in cameras},
            "instruction": instruction, "state": rng.uniform(-1.0, 1.0, state_dim).astype(np.float32)}
