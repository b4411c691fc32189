"""Export fixtures: fp32 ONNX artifacts of the tiny models (traced once per session) and
observations with varied instructions (so batches have left padding)."""

from __future__ import annotations

import numpy as np
import pytest

INSTRUCTIONS = ["reach to the target location", "open the door", "push the button",
                "pick up the object and place it at the goal"]


def observation(seed: int, size: int = 32) -> dict:
    rng = np.random.default_rng(1000 + seed)
    return {
        "images": {"corner": rng.integers(0, 256, (size, size, 3), dtype=np.uint8)},
        "state": rng.uniform(-0.2, 0.8, 4).astype(np.float32),
        "instruction": INSTRUCTIONS[seed % len(INSTRUCTIONS)],
    }


@pytest.fixture(scope="session")
def observations() -> list[dict]:
    return [observation(i) for i in range(6)]


@pytest.fixture(scope="session")
def onnx_fp32(tiny_models, observations, tmp_path_factory) -> dict:
    """head -> validated fp32 ONNX Artifact of tiny_models[head]. Shared: copy before editing."""
    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for head, vla in tiny_models.items():
        art = export(vla, OnnxExportConfig(), root / f"{head}-fp32", example=observations[:2])
        validate(art, vla, observations)
        out[head] = art
    return out
