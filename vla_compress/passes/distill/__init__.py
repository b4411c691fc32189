"""Knowledge distillation: train a compressed student to reproduce its uncompressed teacher's actions."""

from .config import DistillConfig

__all__ = ["DistillConfig"]
