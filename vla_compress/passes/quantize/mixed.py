"""mixed-precision: measure each Linear's sensitivity, then choose bits per Linear under a budget.

Sensitivity is measured where it matters for a policy: the action. For every Linear in scope and
every candidate bit width, that Linear alone is quantized, the calibration observations are run,
and the mean |action - float action| (normalised action space) is recorded; then the Linear is
restored. Cost: (#Linears x #candidates) calibration runs -- use a small calibration set (8-32
observations) and scope (`where`) on real models.
"""

from __future__ import annotations

from typing import Any

from ...errors import PassError
from ..base import PassContext, set_module
from ..calibration import collect_input_stats, run
from .apply import CALIBRATION_ROWS, float_linears
from .config import MixedPrecisionConfig


def _quantized(lin: Any, bits: int, config: MixedPrecisionConfig, stats: Any) -> Any:
    from .awq import awq_scale
    from ...nn.quantized import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    if bits == 8:
        return Int8WeightOnlyLinear.from_float(lin)
    smooth = None
    if config.awq and stats is not None:
        smooth, _ = awq_scale(lin.weight, stats.sample(), stats.mean_abs, config.group_size)
    return Int4WeightOnlyLinear.from_float(lin, config.group_size, smooth)


def _action_error(outs: list, ref: list) -> float:
    return float(sum((o - r).abs().mean().item() for o, r in zip(outs, ref)) / len(ref))


def allocate(sizes: dict[str, int], errors: dict[str, dict[int, float]], avg_bits: float) -> dict[str, int]:
    """Greedy: everything at its lowest option, then repeatedly the upgrade with the largest error
    reduction per extra bit that keeps the parameter-weighted mean bits <= avg_bits."""
    total = sum(sizes.values())
    plan = {n: min(errors[n]) for n in sizes}
    used = sum(sizes[n] * plan[n] for n in sizes)
    if used > avg_bits * total + 1e-6:
        raise PassError(f"pass 'mixed-precision': avg_bits {avg_bits} is below what the lowest candidates need "
                        f"({used / total:.2f} bits)")
    while True:
        best, best_gain = None, 0.0
        for n in sizes:
            higher = sorted(b for b in errors[n] if b > plan[n])
            if not higher:
                continue
            b = higher[0]
            cost = sizes[n] * (b - plan[n])
            if used + cost > avg_bits * total + 1e-6:
                continue
            gain = (errors[n][plan[n]] - errors[n][b]) / cost
            if best is None or gain > best_gain:
                best, best_gain = (n, b, cost), gain
        if best is None:
            return plan
        n, b, cost = best
        plan[n], used = b, used + cost


def mixed_precision(vla: Any, config: MixedPrecisionConfig, context: PassContext) -> Any:
    mods = float_linears(vla, config)
    if not mods:
        raise config.error("where", "no float Linear in scope")
    stats = collect_input_stats(vla, context.calibration, mods, CALIBRATION_ROWS, context.seed, allow_unused=True) \
        if config.awq else {}
    ref = run(vla, context.calibration)
    errors: dict[str, dict[int, float]] = {}
    for name, lin in mods.items():
        options = [b for b in config.bits if not (b == 4 and lin.in_features % config.group_size)]
        errors[name] = {32: 0.0} if 32 in options else {}
        for b in options:
            if b == 32:
                continue
            set_module(vla, name, _quantized(lin, b, config, stats.get(name)))
            try:
                errors[name][b] = _action_error(run(vla, context.calibration), ref)
            finally:
                set_module(vla, name, lin)
        if not errors[name]:  # int4 impossible here and 8/32 not offered: keep float, outside the budget
            del errors[name]
    sizes = {n: mods[n].in_features * mods[n].out_features for n in errors}
    plan = allocate(sizes, errors, config.avg_bits)
    for name, bits in plan.items():
        if bits != 32:
            set_module(vla, name, _quantized(mods[name], bits, config, stats.get(name)))
    total = sum(sizes.values())
    context.notes.update({
        "plan": plan, "avg_bits": round(sum(sizes[n] * b for n, b in plan.items()) / total, 3),
        "sensitivity": {n: {str(b): round(e, 6) for b, e in errs.items()} for n, errs in errors.items()},
        "left_float": sorted(set(mods) - set(errors)),
    })
    return vla
