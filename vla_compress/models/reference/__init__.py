"""The reference family: a small Prismatic-style VLA that vla-compress trains and ships."""

from .adapter import ReferenceVLA
from .configuration_reference import PRESETS, ReferenceConfig

__all__ = ["PRESETS", "ReferenceConfig", "ReferenceVLA"]
