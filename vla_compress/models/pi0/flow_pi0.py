"""π0 / π0.5's flow-matching head: its Euler step count (`num_inference_steps`), for denoise-steps."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...errors import ConfigError, PassError
from .configuration_pi0 import Pi0Arch, Pi0Config


def denoise_steps(vla: Any) -> int:
    return int(vla.cfg.num_inference_steps)


def set_denoise_steps(vla: Any, steps: int) -> None:
    raw = dict(vla.cfg.raw)
    raw["num_inference_steps"] = int(steps)
    try:
        cfg = dataclasses.replace(Pi0Config.from_dict(raw), preset=vla.cfg.preset)
        arch = Pi0Arch.from_config(cfg)
    except ConfigError as e:
        raise PassError(f"π0 with {steps} denoising steps: {e}") from None
    vla.arch, vla.cfg, vla.processor.cfg = arch, cfg, cfg
