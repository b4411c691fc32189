"""Helpers every family folder shares (not a family: no spec): the strict weight load that names
every mismatching tensor, and the seeded tensors tiny fixtures are built from."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError


def load_strict(model: torch.nn.Module, state: dict, source: Path) -> None:
    """load_state_dict that names every missing, unexpected or misshapen tensor and the file."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append("wrong shapes " + "; ".join(shapes[:5]))
    if problems:
        raise CheckpointError(source, "does not match config.json: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


class Random:
    """Seeded tensors: norm weights near 1, biases small, matrices ~ 1/sqrt(fan_in)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, kind: str = "w") -> torch.Tensor:
        x = torch.randn(*shape, generator=self.g)
        if kind == "norm":
            return 1.0 + 0.1 * x
        if kind == "scale":  # LayerScale: far from its 1e-5 init so the test sees it
            return 0.5 + 0.2 * x
        if kind in ("b", "tok"):
            return 0.02 * x if kind == "b" else 0.5 * x
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return x / fan_in**0.5
