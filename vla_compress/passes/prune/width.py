"""width-prune: remove attention heads (respecting GQA) and MLP channels by Wanda-style importance.

Score of input channel j of an output projection W (o_proj/out_proj for attention, down_proj/fc2
for the MLP): S_j = ||X_j||_2 * sum_i |W_ij|, i.e. Wanda's |W_ij| ||X_j|| (Sun et al. 2023)
aggregated over the rows that the channel feeds, with ||X_j|| over all calibration tokens. A head
scores the sum of its head_dim channels; a KV group the sum of its query heads. Removing a head
(or channel) deletes its rows in q/k/v (gate/up, fc1) and its columns in o_proj (down, fc2):
the model gets narrower, with fewer parameters and FLOPs, and no masks.
"""

from __future__ import annotations

import math
from typing import Any

from ..base import PassContext, scoped_components, scoped_modules
from ..calibration import collect_input_stats
from .config import WidthPruneConfig
from .surgery import (LAYER_PREFIX, check_float, head_dim, keep_channels, keep_heads, layer_sizes, layer_stack,
                      sync_config)


def _proj(layer: Any, component: str, which: str):
    if which == "attn":
        return layer.self_attn.out_proj if component == "vision_encoder" else layer.self_attn.o_proj
    return layer.mlp.fc2 if component == "vision_encoder" else layer.mlp.down_proj


def _channel_scores(lin: Any, stats: Any) -> Any:
    s = lin.weight.detach().float().abs().sum(0)
    return s * stats.norm if stats is not None else s


def _select(units: list[list[float]], removable: list[int], n_remove: int | list[int]) -> list[set[int]]:
    """Which units to remove per layer: the n[l] lowest of each layer (a list: uniform allocation),
    or the n lowest over all layers of the score relative to the layer's mean (an int: global),
    at most removable[l] per layer."""
    if isinstance(n_remove, list):
        out = []
        for scores, cap, n in zip(units, removable, n_remove):
            order = sorted(range(len(scores)), key=lambda u: scores[u])
            out.append(set(order[:min(n, cap)]))
        return out
    ranked = []
    for layer, scores in enumerate(units):
        mean = sum(scores) / len(scores) or 1.0
        ranked += [(s / mean, layer, u) for u, s in enumerate(scores)]
    out = [set() for _ in units]
    for _, layer, u in sorted(ranked):
        if n_remove == 0:
            break
        if len(out[layer]) < removable[layer]:
            out[layer].add(u)
            n_remove -= 1
    return out


def _plan_heads(sizes, hd, comp, config, scores) -> tuple[list[list[int]], list[list[int]], dict]:
    """Kept query heads and KV heads of each layer given (sizes and scores of the layers in scope)."""
    head_scores = [s.reshape(-1, hd).sum(1).tolist() for s in scores]
    by_group = comp == "vision_encoder" or config.gqa == "kv_groups"
    units, members = [], []  # per layer: unit scores, and the query heads each unit holds
    for (h, kv, _), hs in zip(sizes, head_scores):
        rep = h // kv
        groups = [list(range(g * rep, (g + 1) * rep)) for g in range(kv)]
        if by_group:  # a unit = one KV group (vision: one head)
            members.append(groups)
            units.append([sum(hs[q] for q in grp) for grp in groups])
        else:  # a unit = the j-th weakest query head of every group (groups stay equal in size)
            ordered = [sorted(grp, key=lambda q: hs[q]) for grp in groups]
            members.append([[o[j] for o in ordered] for j in range(rep)])
            units.append([sum(hs[q] for q in m) for m in members[-1]])
    # each unit removes one head per group, so any subset keeps the groups equal; one unit stays
    removable = [len(u) - 1 for u in units]
    if config.allocation == "uniform":
        n: int | list[int] = [math.floor(len(u) * config.heads_ratio) for u in units]
    else:
        n = math.floor(sum(len(u) for u in units) * config.heads_ratio)
    drop = _select(units, removable, n)
    if not any(drop):
        unit = "KV groups" if by_group and comp == "backbone" else "heads" if by_group else "query heads per group"
        raise config.error("heads_ratio", f"{config.heads_ratio} of {comp}'s {[len(u) for u in units]} {unit} "
                                          f"per layer removes none")
    kept_q, kept_kv = [], []
    for (h, kv, _), mem, dr in zip(sizes, members, drop):
        q = sorted(x for u, m in enumerate(mem) if u not in dr for x in m)
        rep = h // kv
        kept_q.append(q)
        kept_kv.append(sorted({x // rep for x in q}) if by_group else list(range(kv)))
    return kept_q, kept_kv, {"heads_kept": [len(q) for q in kept_q], "kv_heads_kept": [len(k) for k in kept_kv]}


def _plan_channels(config, scores) -> list[Any]:
    import torch

    widths = [len(s) for s in scores]
    r = config.round_to
    if config.allocation == "uniform":
        keeps = [w - math.floor(w * config.mlp_ratio) for w in widths]
    else:
        units = [s.tolist() for s in scores]
        n = math.floor(sum(widths) * config.mlp_ratio)
        drop = _select(units, [w - 1 for w in widths], n)
        keeps = [w - len(d) for w, d in zip(widths, drop)]
    keeps = [min(w, max(r, math.ceil(k / r) * r)) for k, w in zip(keeps, widths)]
    if keeps == widths:
        raise config.error("mlp_ratio", f"{config.mlp_ratio} removes no MLP channel (widths {widths}, "
                                        f"round_to {r})")
    return [torch.sort(torch.topk(s, k).indices).values for s, k in zip(scores, keeps)]


def prune_width(vla: Any, config: WidthPruneConfig, context: PassContext) -> Any:
    """Layers in scope (where.include / exclude on backbone.layers.N, ...) are pruned; others keep
    their size. Uniform allocation removes the same share from every layer in scope."""
    comps = list(scoped_components(vla, config))
    targets: dict[str, Any] = {}
    in_scope: dict[str, list[int]] = {}
    for comp in comps:
        layers = layer_stack(vla, comp)
        names = {f"{LAYER_PREFIX[comp]}.{i}": layer for i, layer in enumerate(layers)}
        in_scope[comp] = sorted(int(k.rsplit(".", 1)[1]) for k in scoped_modules(vla, config, candidates=names))
        for i in in_scope[comp]:
            layer = layers[i]
            check_float(*(m for m in layer.modules() if "Linear" in type(m).__name__))
            for which, ratio in (("attn", config.heads_ratio), ("mlp", config.mlp_ratio)):
                if ratio > 0:
                    targets[f"{comp}:{i}:{which}"] = _proj(layer, comp, which)
    stats = (collect_input_stats(vla, context.calibration, targets) if config.importance == "wanda"
             else {k: None for k in targets})
    for comp in comps:
        idx = in_scope[comp]
        layers = [layer_stack(vla, comp)[i] for i in idx]
        notes: dict[str, Any] = {"layers": idx}
        if config.heads_ratio > 0:
            scores = [_channel_scores(_proj(layer, comp, "attn"), stats[f"{comp}:{i}:attn"])
                      for i, layer in zip(idx, layers)]
            hd = head_dim(vla, comp)
            sizes = [layer_sizes(vla, comp)[i] for i in idx]
            kept_q, kept_kv, info = _plan_heads(sizes, hd, comp, config, scores)
            for layer, q, kv in zip(layers, kept_q, kept_kv):
                keep_heads(layer, comp, q, kv, hd)
            notes.update(info)
        if config.mlp_ratio > 0:
            scores = [_channel_scores(_proj(layer, comp, "mlp"), stats[f"{comp}:{i}:mlp"])
                      for i, layer in zip(idx, layers)]
            channels = _plan_channels(config, scores)
            for layer, ch in zip(layers, channels):
                keep_channels(layer, comp, ch)
            notes["mlp_kept"] = [len(c) for c in channels]
        sync_config(vla, comp)
        context.notes[comp] = notes
    return vla
