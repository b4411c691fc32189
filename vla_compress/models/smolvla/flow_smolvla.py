"""SmolVLA's flow-matching head: its Euler step count (`num_steps` in config.json), for denoise-steps."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import ConfigError, PassError
from .configuration_smolvla import SmolVLAArch, SmolVLAConfig


def denoise_steps(vla: Any) -> int:
    return int(vla.cfg.num_steps)


def set_denoise_steps(vla: Any, steps: int) -> None:
    raw = dict(vla.cfg.raw)
    raw["num_steps"] = int(steps)
    try:
        cfg = dataclasses.replace(SmolVLAConfig.from_dict(raw), preset=vla.cfg.preset)
        arch = SmolVLAArch(cfg, vla.arch.vlm)
    except ConfigError as e:
        raise PassError(f"SmolVLA with {steps} denoising steps: {e}") from None
    vla.arch, vla.cfg, vla.processor.cfg = arch, cfg, cfg
    vla.action_head.plan = arch.plan
