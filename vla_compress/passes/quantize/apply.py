"""Swap nn.Linear modules for quantized ones (modules.py), with calibration where the scheme needs it."""

from __future__ import annotations

from typing import Any

from ..base import PassConfig, PassContext, matches, scoped_modules, set_module
from ..calibration import collect_input_stats
from .config import (FqnToConfig, Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                     Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig)

# rows of inputs kept per Linear for AWQ's search / the static activation percentile
CALIBRATION_ROWS = 512


def float_linears(vla: Any, config: PassConfig) -> dict[str, Any]:
    """The float nn.Linear modules in the config's scope (quantized ones are skipped: a module is
    quantized once, by the first pass or rule that reaches it)."""
    from torch import nn

    return scoped_modules(vla, config, kinds=(nn.Linear,))


def quantize_linears(vla: Any, config: PassConfig, context: PassContext) -> Any:
    mods = float_linears(vla, config)
    context.notes.update(quantize_named(vla, mods, config, context))
    return vla


def quantize_by_fqn(vla: Any, config: FqnToConfig, context: PassContext) -> Any:
    mods = float_linears(vla, config)
    groups: list[dict[str, Any]] = [{} for _ in config.rules]
    for name, mod in mods.items():
        for i, (pattern, _) in enumerate(config.rules):
            if matches(pattern, name):
                groups[i][name] = mod
                break
    for i, ((pattern, _), group) in enumerate(zip(config.rules, groups)):
        if not group and not any(matches(pattern, n) for n in mods):
            raise config.error(f"rules[{i}]", f"pattern {pattern!r} matches no Linear in scope "
                                              f"(names look like: {', '.join(list(mods)[:5])} ...)")
    notes: dict[str, Any] = {"rules": []}
    for (pattern, sub), group in zip(config.rules, groups):
        if sub is None:
            notes["rules"].append({"pattern": pattern, "float": sorted(group)})
            continue
        info = quantize_named(vla, group, sub, context)
        notes["rules"].append({"pattern": pattern, "pass": sub.name, **info})
    context.notes.update(notes)
    return vla


def quantize_named(vla: Any, mods: dict[str, Any], config: PassConfig, context: PassContext) -> dict:
    """Quantize the given float Linears with one simple scheme; returns what was done."""
    from .awq import awq_scale
    from ...nn.quantized import Int4WeightOnlyLinear, Int8DynamicLinear, Int8StaticLinear, Int8WeightOnlyLinear

    skipped = {}
    if isinstance(config, Int4WeightOnlyConfig):
        g = config.group_size
        skipped = {n: f"in_features {m.in_features} is not a multiple of group_size {g}"
                   for n, m in mods.items() if m.in_features % g}
        mods = {n: m for n, m in mods.items() if n not in skipped}
    needs_stats = (isinstance(config, Int4WeightOnlyConfig) and config.awq) or \
        isinstance(config, Int8StaticActivationInt8WeightConfig)
    stats = collect_input_stats(vla, context.calibration, mods, CALIBRATION_ROWS, context.seed, allow_unused=True) \
        if needs_stats and mods else {}
    details: dict[str, Any] = {}
    if isinstance(config, Int8StaticActivationInt8WeightConfig):  # no activations seen: no static scale
        skipped.update({n: "never called as a module on the calibration data (its weight is read directly)"
                        for n in mods if n not in stats})
        mods = {n: m for n, m in mods.items() if n in stats}
    for name, lin in mods.items():
        if isinstance(config, Int8WeightOnlyConfig):
            q = Int8WeightOnlyLinear.from_float(lin)
        elif isinstance(config, Int8DynamicActivationInt8WeightConfig):
            q = Int8DynamicLinear.from_float(lin)
        elif isinstance(config, Int8StaticActivationInt8WeightConfig):
            q = Int8StaticLinear.from_float(lin, static_scale(stats[name].sample(), config.act_percentile))
            details[name] = {"input_scale": float(q.input_scale)}
        elif isinstance(config, Int4WeightOnlyConfig):
            smooth = None
            if config.awq and name not in stats:
                details[name] = {"awq": "no activations seen (weight read directly): plain RTN"}
            elif config.awq:
                smooth, info = awq_scale(lin.weight, stats[name].sample(), stats[name].mean_abs,
                                         config.group_size, config.awq_grid)
                details[name] = info
            q = Int4WeightOnlyLinear.from_float(lin, config.group_size, smooth)
        else:
            raise config.error("pass", "not a quantization scheme")
        set_module(vla, name, q)
    out: dict[str, Any] = {"quantized": sorted(mods), "scheme": config.name}
    if skipped:
        out["skipped"] = skipped
    if details:
        out["modules"] = details
    return out


def static_scale(sample: Any, percentile: float) -> float:
    """Per-tensor activation scale: the given percentile of |x| over the calibration rows, / 127."""
    import torch

    v = sample.abs().flatten()
    if v.numel() > 16_000_000:  # torch.quantile's input limit
        v = v[torch.randperm(v.numel())[:16_000_000]]
    return float(torch.quantile(v, percentile / 100.0)) / 127.0


def quantization_scheme(vla: Any) -> dict[str, dict]:
    """Canonical module name -> scheme dict of every quantized module (what exporters carry)."""
    from ...nn.quantized_state import quantized_modules

    return {name: dict(m.scheme) for name, m in quantized_modules(vla).items()}
