"""What quantization.json (checkpoint/quantization.py) records of a model's quantized modules, and
the empty modules a loader swaps in before the strict state-dict load."""

from __future__ import annotations

from typing import Any

from ..checkpoint.quantization import CLASSES, FORMAT_VERSION


def _module_classes() -> dict[str, type]:
    from . import quantized

    return {name: getattr(quantized, name) for name in CLASSES}


def quantized_modules(vla: Any) -> dict[str, Any]:
    """Canonical name -> module of every quantized module in the model."""
    out = {}
    for comp, mod in vla.components().items():
        for rel, m in mod.named_modules():
            if getattr(m, "is_quantized", False):
                out[f"{comp}.{rel}" if rel else comp] = m
    return out


def module_spec(m: Any) -> dict:
    """What quantization.json records for one quantized module."""
    cls = type(m).__name__
    if cls not in CLASSES:
        raise TypeError(f"{cls} is not a quantized module class vla-compress can save (known: {', '.join(CLASSES)})")
    bits, activation = CLASSES[cls]
    return {"class": cls, "in_features": int(m.in_features), "out_features": int(m.out_features),
            "bias": m.bias is not None, "weight_bits": bits, "group_size": int(getattr(m, "group_size", 0)),
            "activation": activation, "smoothing": getattr(m, "smooth", None) is not None, "scheme": dict(m.scheme)}


def quantization_config(vla: Any) -> dict | None:
    """The quantization.json content for `vla`, or None when it has no quantized module."""
    mods = quantized_modules(vla)
    if not mods:
        return None
    return {"format_version": FORMAT_VERSION, "modules": {n: module_spec(m) for n, m in sorted(mods.items())}}


def empty_module(spec: dict) -> Any:
    """A quantized module of the recorded class and shapes (placeholder values until the state
    dict is loaded into it)."""
    import torch

    cls = _module_classes()[spec["class"]]
    bias = torch.zeros(spec["out_features"]) if spec.get("bias") else None
    if spec["class"] == "Int4WeightOnlyLinear":
        return cls(spec["in_features"], spec["out_features"], spec["group_size"], bias,
                   awq=spec.get("smoothing", False))
    return cls(spec["in_features"], spec["out_features"], bias)
