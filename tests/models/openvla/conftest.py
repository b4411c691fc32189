"""Tiny OpenVLA / OpenVLA-OFT checkpoints in the real layout, and observations for them.

The directories are session-scoped and shared: copy one before corrupting it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vla_compress.models.openvla.fixtures import TINY_IMAGE, write_tiny_openvla, write_tiny_openvla_oft


@pytest.fixture(scope="session")
def openvla_dir(tmp_path_factory) -> Path:
    return write_tiny_openvla(tmp_path_factory.mktemp("openvla") / "tiny-openvla", seed=0)


@pytest.fixture(scope="session")
def oft_dir(tmp_path_factory) -> Path:
    """LIBERO-shaped OFT: 7-d actions, 8-d proprio, chunk 8 and 2 images inferred from them."""
    return write_tiny_openvla_oft(tmp_path_factory.mktemp("oft") / "tiny-oft", seed=1)


@pytest.fixture(scope="session")
def oft_small_dir(tmp_path_factory) -> Path:
    """OFT with explicit settings: 3-d actions, chunk 2, one image, no proprio, no DDP prefix."""
    return write_tiny_openvla_oft(tmp_path_factory.mktemp("oft-small") / "tiny-oft-small", seed=2, action_dim=3,
                                  proprio_dim=0, chunk_size=2, num_images=1, ddp_prefix=False, step="latest_checkpoint.pt")


@pytest.fixture
def copy_dir(tmp_path):
    def copy(src: Path) -> Path:
        return Path(shutil.copytree(src, tmp_path / src.name))

    return copy


def make_obs(seed: int = 0, cameras=("primary",), size: int = TINY_IMAGE, state_dim: int | None = None,
             instruction: str = "Put the bowl on the plate") -> dict:
    rng = np.random.default_rng(seed)
    obs = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras},
           "instruction": instruction}
    if state_dim:
        obs["state"] = rng.uniform(-1.5, 1.5, state_dim).astype(np.float32)
    return obs
