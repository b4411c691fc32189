"""quantization.json: every quantized module of a checkpoint by canonical name, Hugging Face's
`quantization_config` idea.

A model whose Linears were swapped for quantized modules (nn/quantized.py) saves a state dict with
`qweight` / `scale` / `smooth` / `input_scale` tensors where a float model has `weight`. The
family's loader builds float nn.Linear modules from config.json, so on its own it cannot load that
state dict. quantization.json lists every quantized module with what is needed to build an empty
module of the right class and shapes:

    {"format_version": 1,
     "modules": {"backbone.layers.0.mlp.up_proj":
                   {"class": "Int4WeightOnlyLinear", "in_features": 64, "out_features": 128,
                    "bias": false, "weight_bits": 4, "group_size": 32, "activation": "float",
                    "smoothing": true, "scheme": {...the module's scheme, for exporters...}}}}

models/sidecars.py swaps those empty modules in BEFORE the strict state-dict load, so the load
checks every tensor's name and shape as for a float checkpoint (no strict=False anywhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fileio import read_json, write_json

FILENAME = "quantization.json"
FORMAT_VERSION = 1
# class name -> (weight bits, activation handling); the classes live in nn/quantized.py
CLASSES = {
    "Int8WeightOnlyLinear": (8, "float"),
    "Int8DynamicLinear": (8, "int8_dynamic_per_token"),
    "Int8StaticLinear": (8, "int8_static_per_tensor"),
    "Int4WeightOnlyLinear": (4, "float"),
}


def write_quantization(path: str | Path, content: dict | None) -> str | None:
    """Write quantization.json into checkpoint directory `path` (or remove a stale one when the model
    has no quantized module); returns the name written."""
    target = Path(path) / FILENAME
    if content is None:
        target.unlink(missing_ok=True)
        return None
    write_json(target, content)
    return FILENAME


def read_quantization(path: str | Path) -> dict | None:
    """quantization.json of checkpoint `path` with every module entry validated, or None."""
    source = Path(path) / FILENAME
    if not source.is_file():
        return None
    config = read_json(source)
    if not isinstance(config, dict) or not isinstance(config.get("modules"), dict):
        raise CheckpointError(source, "expected {\"format_version\": 1, \"modules\": {name: spec}}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(source, f"format_version {version!r} is not supported (this vla-compress reads "
                                      f"{FORMAT_VERSION})")
    for name, spec in config["modules"].items():
        check_spec(name, spec, source)
    return config


def check_spec(name: str, spec: Any, source: Path) -> None:
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
