"""Shared fixtures: tiny random reference models (both heads), saved checkpoints, observations.

Everything is built locally from seeds; nothing is downloaded. Torch is limited to one thread
because the test machines share their cores with training jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

# MuJoCo fixes its GL backend when first imported; choose it (EGL, else OSMesa) before any test
# module can import metaworld/mujoco, so rendering works whatever order the tests run in.
from vla_compress.evaluate.metaworld_env import ensure_gl_backend  # noqa: E402

ensure_gl_backend()

HEADS = ("regression", "tokens")


def _build_tiny(head: str, seed: int = 0):
    """A tiny model whose statistics are not the identity, so their round trip is observable."""
    from vla_compress.models.base import Normalizer
    from vla_compress.models.reference import ReferenceVLA

    cfg = ReferenceVLA.tiny(seed, head=head).cfg
    action_norm = Normalizer(np.array([-0.5, -1.0, -2.0, -1.0]), np.array([0.5, 1.0, 2.0, 1.0]),
                             mask=np.array([True, True, True, False]))
    state_norm = Normalizer(np.array([-0.3, 0.4, 0.0, 0.0]), np.array([0.3, 0.9, 0.3, 1.0]))
    model = ReferenceVLA.build(cfg, seed=seed, action_norm=action_norm, state_norm=state_norm)
    model.training_info = {"steps": 0, "seed": seed, "note": "tiny random model for tests"}
    return model


@pytest.fixture(scope="session")
def tiny_models() -> dict:
    """head -> tiny random ReferenceVLA. Shared across tests: never mutate these."""
    return {head: _build_tiny(head) for head in HEADS}


@pytest.fixture(params=HEADS)
def tiny_model(request, tiny_models):
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """head -> directory of a saved tiny checkpoint. Shared: copy it before corrupting it."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {head: m.save_pretrained(root / f"tiny-{head}") for head, m in tiny_models.items()}


@pytest.fixture
def make_obs() -> Callable[..., dict]:
    """make_obs(seed, instruction=..., size=32) -> one observation as the adapter expects it."""

    def make(seed: int = 0, instruction: str = "reach to the target location", size: int = 32,
             camera: str = "corner", state_dim: int = 4) -> dict:
        rng = np.random.default_rng(seed)
        return {
            "images": {camera: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
            "state": rng.uniform(-0.2, 0.8, state_dim).astype(np.float32),
            "instruction": instruction,
        }

    return make
