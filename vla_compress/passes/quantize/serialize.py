"""Quantized checkpoints that reload: `quantization.json`, Hugging Face's `quantization_config` idea.

A model whose Linears were swapped for quantized modules (modules.py) saves a state dict with
`qweight` / `scale` / `smooth` / `input_scale` tensors where a float model has `weight`. The
family's loader builds float nn.Linear modules from config.json, so on its own it cannot load that
state dict. `quantization.json` lists every quantized module by canonical name with what is needed
to build an empty module of the right class and shapes:

    {"format_version": 1,
     "modules": {"backbone.layers.0.mlp.up_proj":
                   {"class": "Int4WeightOnlyLinear", "in_features": 64, "out_features": 128,
                    "bias": false, "weight_bits": 4, "group_size": 32, "activation": "float",
                    "smoothing": true, "scheme": {...the module's scheme, for exporters...}}}}

`apply_quantization_config` swaps those empty modules in BEFORE the strict state-dict load, so the
load checks every tensor's name and shape as for a float checkpoint (no strict=False anywhere).
A module the file names must exist in the rebuilt model as a float nn.Linear of the same shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CheckpointError

FILENAME = "quantization.json"
FORMAT_VERSION = 1
# class name -> (weight bits, activation handling); the classes live in modules.py
CLASSES = {
    "Int8WeightOnlyLinear": (8, "float"),
    "Int8DynamicLinear": (8, "int8_dynamic_per_token"),
    "Int8StaticLinear": (8, "int8_static_per_tensor"),
    "Int4WeightOnlyLinear": (4, "float"),
}


def _module_classes() -> dict[str, type]:
    from . import modules

    return {name: getattr(modules, name) for name in CLASSES}


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


def _check_spec(name: str, spec: Any, source: Path) -> None:
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(source, f"modules[{name!r}]: {problem}")

    if not isinstance(spec, dict):
        raise bad(f"expected a mapping, got {type(spec).__name__}")
    cls = spec.get("class")
    if cls not in CLASSES:
        raise bad(f"unknown quantized module class {cls!r} (known: {', '.join(CLASSES)})")
    for key in ("in_features", "out_features"):
        v = spec.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(f"{key} must be a positive integer, got {v!r}")
    for key in ("bias", "smoothing"):
        if not isinstance(spec.get(key, False), bool):
            raise bad(f"{key} must be true or false, got {spec.get(key)!r}")
    bits, activation = CLASSES[cls]
    if spec.get("weight_bits", bits) != bits or spec.get("activation", activation) != activation:
        raise bad(f"{cls} stores {bits}-bit weights with {activation} activations, the file says "
                  f"{spec.get('weight_bits')!r} / {spec.get('activation')!r}")
    if cls == "Int4WeightOnlyLinear":
        g = spec.get("group_size")
        if not isinstance(g, int) or g < 2 or g % 2 or spec["in_features"] % g:
            raise bad(f"group_size {g!r} must be an even integer dividing in_features {spec['in_features']}")
    elif spec.get("smoothing"):
        raise bad(f"{cls} has no smoothing vector")


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


def apply_quantization_config(vla: Any, config: Any, source: Path) -> list[str]:
    """Swap the float Linears named in `config` (quantization.json's content, read from `source`)
    for empty quantized modules of the recorded class and shapes; returns the names swapped.
    Every problem is a CheckpointError naming `source`."""
    from torch import nn

    from ..base import get_module, set_module

    source = Path(source)
    if not isinstance(config, dict) or not isinstance(config.get("modules"), dict):
        raise CheckpointError(source, "expected {\"format_version\": 1, \"modules\": {name: spec}}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(source, f"format_version {version!r} is not supported (this vla-compress reads "
                                      f"{FORMAT_VERSION})")
    components = vla.components()
    for name, spec in config["modules"].items():
        _check_spec(name, spec, source)
        if name.partition(".")[0] not in components:
            raise CheckpointError(source, f"modules[{name!r}]: no component {name.partition('.')[0]!r} in the model "
                                          f"(components: {', '.join(components)})")
        try:
            current = get_module(vla, name)
        except AttributeError:
            raise CheckpointError(source, f"modules[{name!r}]: no such module in the model built from "
                                          "config.json") from None
        if not isinstance(current, nn.Linear):
            raise CheckpointError(source, f"modules[{name!r}]: the model has a {type(current).__name__} there, "
                                          "not a Linear")
        shape = (current.in_features, current.out_features, current.bias is not None)
        if shape != (spec["in_features"], spec["out_features"], spec.get("bias", False)):
            raise CheckpointError(source, f"modules[{name!r}]: shape mismatch: file says in_features="
                                          f"{spec['in_features']}, out_features={spec['out_features']}, bias="
                                          f"{spec.get('bias', False)}; config.json builds in_features="
                                          f"{shape[0]}, out_features={shape[1]}, bias={shape[2]}")
        set_module(vla, name, empty_module(spec).to(current.weight.device))
    return sorted(config["modules"])
