"""width-prune: remove attention heads (respecting GQA) and MLP channels by Wanda-style importance.

Score of input channel j of an output projection W (o_proj/out_proj for attention, down_proj/fc2
for the MLP): S_j = ||X_j||_2 * sum_i |W_ij|, i.e. Wanda's |W_ij| ||X_j|| (Sun et al. 2023)
aggregated over the rows that the channel feeds, with ||X_j|| over all calibration tokens. A head
scores the sum of its head_dim channels; a KV group the sum of its query heads. Removing a head
(or channel) deletes its rows in q/k/v (gate/up, fc1) and its columns in o_proj (down, fc2):
the model gets narrower, with fewer parameters and FLOPs, and no masks. Where each stack's
projections are, per family, is in layout.py.
"""

from __future__ import annotations

import math
from typing import Any

from ..base import PassContext
from ..calibration import collect_input_stats
from .config import WidthPruneConfig
from ...nn.stacks import Stack
from .layout import scoped_layers, sync_config
from ...nn.surgery import check_layer_float, keep_channels, keep_heads


def _proj(stack: Stack, layer: Any, which: str):
    return stack.out_projection(layer) if which == "attn" else stack.down_projection(layer)


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


def _plan_heads(sizes, stack: Stack, config, scores) -> tuple[list[list[int]], list[list[int]], dict]:
    """Kept query heads and KV heads of each layer given (sizes and scores of the layers in scope)."""
    head_scores = [s.reshape(-1, stack.head_dim).sum(1).tolist() for s in scores]
    by_group = not stack.has_kv or config.gqa == "kv_groups"
    if by_group and stack.has_kv and stack.kv_locked:
        raise config.error("gqa", f"{stack.name}: {stack.kv_locked}")
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
        unit = "KV groups" if by_group and stack.has_kv else "heads" if by_group else "query heads per group"
        raise config.error("heads_ratio", f"{config.heads_ratio} of {stack.name}'s {[len(u) for u in units]} {unit} "
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
    their size. Uniform allocation removes the same share from every layer in scope. Layers that do
    not run their output projection / MLP in a policy step (layout.py) are not in scope."""
    scoped = scoped_layers(vla, config, width=True)
    stacks = [s for s, _ in scoped]
    in_scope = {s.name: idx for s, idx in scoped}
    targets: dict[str, Any] = {}
    for stack in stacks:
        for i in in_scope[stack.name]:
            layer = stack.layers[i]
            check_layer_float(layer)
            for which, ratio in (("attn", config.heads_ratio), ("mlp", config.mlp_ratio)):
                if ratio > 0:
                    targets[f"{stack.name}:{i}:{which}"] = _proj(stack, layer, which)
    stats = (collect_input_stats(vla, context.calibration, targets) if config.importance == "wanda"
             else {k: None for k in targets})
    for stack in stacks:
        idx = in_scope[stack.name]
        layers = [stack.layers[i] for i in idx]
        notes: dict[str, Any] = {"layers": idx}
        if config.heads_ratio > 0:
            scores = [_channel_scores(_proj(stack, layer, "attn"), stats[f"{stack.name}:{i}:attn"])
                      for i, layer in zip(idx, layers)]
            all_sizes = stack.sizes()
            kept_q, kept_kv, info = _plan_heads([all_sizes[i] for i in idx], stack, config, scores)
            for layer, q, kv in zip(layers, kept_q, kept_kv):
                keep_heads(stack, layer, q, kv)
            notes.update(info)
        if config.mlp_ratio > 0:
            scores = [_channel_scores(_proj(stack, layer, "mlp"), stats[f"{stack.name}:{i}:mlp"])
                      for i, layer in zip(idx, layers)]
            channels = _plan_channels(config, scores)
            for layer, ch in zip(layers, channels):
                keep_channels(stack, layer, ch)
            notes["mlp_kept"] = [len(c) for c in channels]
        sync_config(vla, stack)
        context.notes[stack.name] = notes
    return vla
