"""The SmolVLA family (LeRobot's SmolVLA: SmolVLM backbone + flow-matching action expert), read
natively from LeRobot's checkpoint files.

Names resolve lazily (PEP 562), so that the family's spec (spec.py) and its torch-free modules
can be imported without importing torch."""

from __future__ import annotations

from typing import Any

__all__ = ["SmolVLA", "SmolVLAArch", "SmolVLAConfig", "VLMConfig", "load_smolvla", "smolvla_base_config_dict"]
_FROM = {"SmolVLA": "adapter", "load_smolvla": "adapter", "SmolVLAArch": "configuration_smolvla",
         "SmolVLAConfig": "configuration_smolvla", "VLMConfig": "configuration_smolvla",
         "smolvla_base_config_dict": "configuration_smolvla"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
