"""Sensitivity sweep: what is safe to cut? Each candidate pass config is applied to a fresh copy of
the model and scored by its offline action error against the original on held-out frames, with the
parameters and FLOPs it leaves. Cheap (no simulation): it says where to look before a closed-loop run.

Candidates per kind (for the components that have them):
  layer-drop          one layer at a time (backbone and vision encoder), by index
  width-prune         MLP channels and attention heads, 25 / 50 / 75 % removed
  visual-token-prune  keep 75 / 50 / 25 % of the visual tokens
  int8 / int4         int8-dynamic / int4-weight-only (group 64) on one component at a time
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

from ..errors import ConfigError
from .base import PassContext

KINDS = ("layer-drop", "width-prune", "visual-token-prune", "int8", "int4")
RATIOS = (0.25, 0.5, 0.75)


def candidates(vla: Any, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, list[dict]]]:
    """(label, [pass config dicts]) for every configuration the sweep tries on `vla`."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown sweep kind(s) {unknown}; known: {', '.join(KINDS)}")
    from ..models.registry import family_of
    from .prune.layout import family_stacks

    comps = vla.components()
    out: list[tuple[str, list[dict]]] = []
    stacks = family_stacks(vla)
    if "layer-drop" in kinds:
        for st in stacks:
            if st.no_drop:
                continue
            b = st.drop_block
            for i in range(0, st.n_active() - b + 1, b):
                label = f"{st.name}[{i}]" if b == 1 else f"{st.name}[{i}:{i + b}]"
                out.append((f"layer-drop {label}", [{"pass": "layer-drop", "num_layers": b, "where": {
                    "components": [st.component], "include": [f"{st.prefix}.{i + j}" for j in range(b)]}}]))
    if "width-prune" in kinds:
        prunable = list(dict.fromkeys(st.component for st in stacks))
        for comp in prunable:
            gqa = {"gqa": "query_heads"} if any(st.kv_locked for st in stacks if st.component == comp) else {}
            for r in RATIOS:
                out.append((f"width-prune {comp} mlp {r:.0%}", [{"pass": "width-prune", "mlp_ratio": r, "where": comp}]))
                out.append((f"width-prune {comp} heads {r:.0%}",
                            [{"pass": "width-prune", "heads_ratio": r, "where": comp, **gqa}]))
    if "visual-token-prune" in kinds and family_of(vla).supports("tokens"):
        for r in RATIOS:
            out.append((f"visual-token-prune keep {1 - r:.0%}", [{"pass": "visual-token-prune", "keep_ratio": 1 - r}]))
    for kind, cfg in (("int8", {"pass": "int8-dynamic"}), ("int4", {"pass": "int4-weight-only", "group_size": 64})):
        if kind in kinds:
            for comp in comps:
                out.append((f"{cfg['pass']} {comp}", [{**cfg, "where": comp}]))
    return out


def sweep(vla: Any, calibration: list[dict], held_out: list[dict], kinds: tuple[str, ...] = KINDS,
          progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Score every candidate; rows sorted by action error (smallest first). A candidate the model
    cannot take (e.g. a width that does not divide) is kept with its error message."""
    from .calibration import calibration_dataset
    from .runner import apply_passes, compare_models, measure

    if not held_out:
        raise ConfigError("the sweep needs held-out observations")
    base = measure(vla)
    rows = []
    todo = candidates(vla, kinds)
    for n, (label, configs) in enumerate(todo, 1):
        if progress:
            progress(label, n, len(todo))
        t0 = time.perf_counter()
        student = copy.deepcopy(vla)
        try:
            ctx = PassContext(calibration=calibration_dataset(student, calibration))
            student = apply_passes(student, configs, ctx)
        except ConfigError as e:
            rows.append({"candidate": label, "configs": configs, "error": str(e)})
            continue
        after = student.compression_log[-1]["after"]
        diff = compare_models(vla, student, held_out)
        rows.append({"candidate": label, "configs": configs, "action_l1": diff["action_l1"],
                     "max_abs": diff["max_abs"], "params": after["params_logical"],
                     "params_fraction": after["params_logical"] / base["params_logical"],
                     "flops_fraction": after["flops"] / base["flops"],
                     "state_dict_fraction": after["state_dict_bytes"] / base["state_dict_bytes"],
                     "wall_s": round(time.perf_counter() - t0, 2)})
    return sorted(rows, key=lambda r: (r.get("action_l1") is None, r.get("action_l1") or 0.0))
