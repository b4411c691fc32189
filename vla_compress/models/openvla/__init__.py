"""The OpenVLA family: OpenVLA (7 autoregressive action tokens) and OpenVLA-OFT (parallel-decoded
L1-regression chunks), read natively from the original Hugging Face checkpoints.

Names resolve lazily (PEP 562) so that the torch-free modules of this package (the processor,
the configuration) can be imported, e.g. by an ONNX artifact's runtime, without importing torch."""

from __future__ import annotations

from typing import Any

__all__ = ["OpenVLA", "OpenVLAConfig", "OpenVLAOFT", "load_openvla", "openvla_7b_config_dict"]
_FROM = {"OpenVLA": "adapter", "OpenVLAOFT": "adapter", "load_openvla": "adapter",
         "OpenVLAConfig": "configuration_openvla", "openvla_7b_config_dict": "configuration_openvla"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
