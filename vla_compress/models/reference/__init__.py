"""The reference family: a small Prismatic-style VLA that vla-compress trains and ships.

Names resolve lazily (PEP 562), so that the family's spec (spec.py) and its torch-free modules
can be imported, e.g. by the registry or an artifact's runtime, without importing torch."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "ReferenceConfig", "ReferenceVLA"]
_FROM = {"ReferenceVLA": "adapter", "PRESETS": "configuration_reference", "ReferenceConfig": "configuration_reference"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
