"""Denoising-step reduction for flow-matching action heads (SmolVLA, π0, π0.5)."""

from .config import DenoiseStepsConfig

__all__ = ["DenoiseStepsConfig"]
