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


def score(vla: Any, label: str, configs: list[dict], calibration: list[dict], held_out: list[dict],
          base: dict) -> dict:
    """One sweep row: `configs` applied to a copy of `vla`, scored against it on `held_out`. A
    candidate the model cannot take (e.g. a width that does not divide) keeps its error message."""
    from .calibration import calibration_dataset
    from .runner import apply_passes, compare_models

    t0 = time.perf_counter()
    student = copy.deepcopy(vla)
    try:
        ctx = PassContext(calibration=calibration_dataset(student, calibration))
        student = apply_passes(student, configs, ctx)
    except ConfigError as e:
        return {"candidate": label, "configs": configs, "error": str(e)}
    after = student.compression_log[-1]["after"]
    diff = compare_models(vla, student, held_out)
    return {"candidate": label, "configs": configs, "action_l1": diff["action_l1"],
            "max_abs": diff["max_abs"], "params": after["params_logical"],
            "params_fraction": after["params_logical"] / base["params_logical"],
            "flops_fraction": after["flops"] / base["flops"],
            "state_dict_fraction": after["state_dict_bytes"] / base["state_dict_bytes"],
            "wall_s": round(time.perf_counter() - t0, 2)}


_LOADED: dict[str, Any] = {}  # a sweep worker's checkpoint, loaded once per process


def score_in_worker(args: tuple) -> dict:
    """score() in an executor's worker: the checkpoint is loaded from its path (once per process)."""
    checkpoint, allow_pickle, threads, label, configs, calibration, held_out, base = args
    import torch

    from ..models import load_vla

    torch.set_num_threads(threads)
    if checkpoint not in _LOADED:
        _LOADED.clear()
        _LOADED[checkpoint] = load_vla(checkpoint, allow_pickle=allow_pickle)
    return score(_LOADED[checkpoint], label, configs, calibration, held_out, base)


def sweep(vla: Any, calibration: list[dict], held_out: list[dict], kinds: tuple[str, ...] = KINDS,
          progress: Callable[[str, int, int], None] | None = None, executor: Any = None,
          checkpoint: str | None = None, allow_pickle: bool = False, threads: int = 1) -> list[dict]:
    """Score every candidate; rows sorted by action error (smallest first). With an `executor`
    (evaluate/executor.py: local processes or Ray) the candidates are scored on its workers, each
    loading `checkpoint` (the directory `vla` was loaded from) once, with `threads` threads."""
    from .runner import measure

    if not held_out:
        raise ConfigError("the sweep needs held-out observations")
    base = measure(vla)
    todo = candidates(vla, kinds)
    if executor is None:
        rows = []
        for n, (label, configs) in enumerate(todo, 1):
            if progress:
                progress(label, n, len(todo))
            rows.append(score(vla, label, configs, calibration, held_out, base))
    else:
        if checkpoint is None:
            raise ConfigError("a sweep on an executor needs the checkpoint's path (its workers load it)")
        items = [(str(checkpoint), allow_pickle, threads, label, configs, calibration, held_out, base)
                 for label, configs in todo]
        rows = []
        for n, row in enumerate(executor.map_calls(score_in_worker, items), 1):
            rows.append(row)
            if progress:
                progress(row["candidate"], n, len(todo))
    return sorted(rows, key=lambda r: (r.get("action_l1") is None, r.get("action_l1") or 0.0, r["candidate"]))
