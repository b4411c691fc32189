"""Saving and re-applying the sidecar files of a compressed checkpoint, the same way for every family.

Every family's save_pretrained calls `save_sidecars(vla, dir)`; its from_pretrained calls
`restore_modules(vla, dir)` on the freshly built model before the strict state-dict load (the
quantized modules of quantization.json must be in place for their tensors to load) and
`restore_state(vla, dir)` after it (the token reduction and the compression log). The files are
read and validated by the torch-free checkpoint layer (checkpoint/); what a family's modules look
like comes from its spec (`tokens`: tome_state / install_tome / full_visual_tokens; `prune`: stacks).
Pruned per-layer shapes live in the family's own config.json; `restore_layer_sizes` resizes the
freshly built layers to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint.compression import COMPRESSION_FILE, read_compression, write_compression
from ..checkpoint.quantization import FILENAME as QUANT_FILE
from ..checkpoint.quantization import read_quantization, write_quantization
from ..checkpoint.tokens import TOKENS_FILE, check_token_count, read_token_reduction, write_token_reduction
from ..errors import CheckpointError, ConfigError
from .base import get_module, set_module
from .registry import family_of


def _tokens_hook(vla: Any, name: str) -> Any:
    spec = family_of(vla)
    return spec.hook("tokens", name) if spec.has_hook("tokens", name) else None


def full_visual_tokens(vla: Any) -> int:
    """Visual tokens a keep set indexes (every camera's / image's, before any keep set)."""
    count = _tokens_hook(vla, "full_visual_tokens")
    if count is not None:
        return count(vla)
    keep = vla.visual_keep
    if not keep.numel():
        return vla.token_counts().visual
    try:
        vla.visual_keep = keep.new_zeros(0)
        return vla.token_counts().visual
    finally:
        vla.visual_keep = keep


def tome_state(vla: Any) -> dict | None:
    state = _tokens_hook(vla, "tome_state")
    return state(vla) if state is not None else None


def save_sidecars(vla: Any, path: str | Path) -> list[str]:
    """Write quantization.json, token_reduction.json and compression.json into checkpoint directory
    `path` where the model needs them (removing stale copies where it does not); returns the names."""
    from ..nn.quantized_state import quantization_config

    keep = getattr(vla, "visual_keep", None)
    keep_list = keep.tolist() if keep is not None and keep.numel() else None
    merge = tome_state(vla)
    full = full_visual_tokens(vla) if keep_list or merge else 0
    written = [write_quantization(path, quantization_config(vla)),
               write_token_reduction(path, keep_list, full, merge),
               write_compression(path, list(getattr(vla, "compression_log", None) or []))]
    return [w for w in written if w]


def restore_modules(vla: Any, path: str | Path) -> list[str]:
    """Swap in the empty quantized modules quantization.json names (before the strict load); returns
    the names swapped. Every problem is a CheckpointError naming the file."""
    from torch import nn

    from ..nn.quantized_state import empty_module

    config = read_quantization(path)
    if config is None:
        return []
    source = Path(path) / QUANT_FILE
    components = vla.components()
    for name, spec in config["modules"].items():
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


def _install_tome(vla: Any, merge: dict, source: Path) -> None:
    install = _tokens_hook(vla, "install_tome")
    try:
        if install is None:
            raise ValueError(f"the {vla.family} family cannot merge tokens")
        install(vla, merge)
    except ValueError as e:
        raise CheckpointError(source, f"token_merge: {e}") from None


def restore_state(vla: Any, path: str | Path) -> Any:
    """Re-apply token_reduction.json (keep set, ToMe schedule) and compression.json (the pass log; a
    legacy ToMe schedule) of checkpoint `path` to a model loaded from it."""
    import torch

    path = Path(path)
    info = read_compression(path)
    legacy = (info or {}).get("token_merge")
    if legacy is not None:  # written before token_reduction.json held every family's schedule
        n_layers = len(vla.vision_encoder.encoder.layers)
        if len(legacy["r_per_layer"]) != n_layers:
            raise CheckpointError(path / COMPRESSION_FILE, f"token_merge.r_per_layer has "
                                                           f"{len(legacy['r_per_layer'])} entries; the vision "
                                                           f"encoder has {n_layers} layers")
        _install_tome(vla, {"r_per_layer": {"encoder": legacy["r_per_layer"]}, "mode": legacy["mode"]},
                      path / COMPRESSION_FILE)
    d = read_token_reduction(path)
    if d is not None:
        if d.get("token_merge") is not None:  # first: a merge that hands tokens on changes the count
            _install_tome(vla, d["token_merge"], path / TOKENS_FILE)
        check_token_count(d, full_visual_tokens(vla), path)
        if d.get("visual_keep") is not None:
            vla.visual_keep = torch.tensor(d["visual_keep"], dtype=torch.long, device=vla.visual_keep.device)
    if info is not None:
        vla.compression_log = list(info.get("log", []))
    return vla


def restore_layer_sizes(vla: Any, sizes: dict[str, list[tuple[int, int, int]]], source: str = "config") -> None:
    """Rebuild the pruned per-layer shapes recorded in `sizes` (checkpoint/layer_sizes.py) on a freshly
    built model (call before its state dict is loaded; any device, meta included)."""
    from ..nn.surgery import resize_layer

    if not sizes:
        return
    stacks = {s.name: s for s in family_of(vla).hook("prune", "stacks")(vla)}
    unknown = sorted(set(sizes) - set(stacks))
    if unknown:
        raise ConfigError(f"{source}: layer_sizes names unknown layer stacks {unknown} (known: {sorted(stacks)})")
    for name, rows in sizes.items():
        stack = stacks[name]
        if len(rows) != len(stack.layers):
            raise ConfigError(f"{source}: layer_sizes.{name} lists {len(rows)} layers; the model has "
                              f"{len(stack.layers)}")
        for layer, (h, kv, inter) in zip(stack.layers, rows):
            resize_layer(stack, layer, h, kv, inter)
