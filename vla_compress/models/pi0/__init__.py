"""The π0 / π0.5 family (LeRobot's pi0 and pi05: PaliGemma + Gemma action expert, flow matching),
read natively from LeRobot's checkpoint files.

Names resolve lazily (PEP 562), so that the family's spec (spec.py) imports no torch."""

from __future__ import annotations

from typing import Any

__all__ = ["Pi0", "Pi05", "Pi0Arch", "Pi0Config", "load_pi0", "write_tiny_pi0"]
_FROM = {"Pi0": "adapter", "Pi05": "adapter", "load_pi0": "adapter", "Pi0Arch": "configuration_pi0",
         "Pi0Config": "configuration_pi0", "write_tiny_pi0": "fixtures"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
