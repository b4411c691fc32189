"""layer-drop: remove whole transformer layers by ShortGPT block influence or angular distance.

ShortGPT (Men et al. 2024): a layer whose output is nearly parallel to its input changes little;
BI_i = 1 - E_t[cos(h_i,t, h_i+1,t)]. Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the
Deeper Layers"): the block of n consecutive layers whose input and output are closest in angle,
d(l, n) = E_t[arccos(cos(h_l,t, h_l+n,t))] / pi, is removed as a whole. Both are measured on the
calibration observations over every token position of a policy step, on the residual stream at the
layer boundaries the family's layout names (layout.py). Where a family drops layers in blocks
(SmolVLA: a self- and a cross-attention layer with their action-expert layers), a unit is a block and
its influence is measured across the block on the action expert's residual stream, the path to the
actions.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import PassError
from ..base import PassContext
from ..calibration import run
from .config import LayerDropConfig
from ...nn.stacks import Stack
from .layout import scoped_layers, sync_config
from ...nn.surgery import check_layer_float


class _Stream:
    """Hooks on the boundaries of one residual stream accumulating E_t[cos] and E_t[arccos cos / pi]
    between chosen pairs of boundaries (a pass through the stack fires boundaries 0..n in order)."""

    def __init__(self, n_boundaries: int, pairs: list[tuple[int, int]]):
        self.n = n_boundaries
        self.pairs = pairs
        self.cos = {p: 0.0 for p in pairs}
        self.angle = {p: 0.0 for p in pairs}
        self.count = {p: 0 for p in pairs}
        self.fired = [0] * n_boundaries
        self.h: dict[int, Any] = {}

    def hook(self, b: int, kind: str):
        import torch.nn.functional as F

        def fn(module, args, output=None):
            t = args[0] if kind == "pre" else (output[0] if isinstance(output, tuple) else output)
            self.h[b] = t.detach().float()
            self.fired[b] += 1
            for p in self.pairs:
                if p[1] == b and p[0] in self.h and self.h[p[0]].shape == self.h[b].shape:
                    c = F.cosine_similarity(self.h[p[0]], self.h[b], dim=-1).clamp(-1, 1)
                    self.cos[p] += c.sum().item()
                    self.angle[p] += (c.acos() / math.pi).sum().item()
                    self.count[p] += c.numel()
            if b == self.n - 1:
                self.h.clear()
        return fn

    def influence(self, p: tuple[int, int]) -> float:
        return 1.0 - self.cos[p] / max(self.count[p], 1)

    def distance(self, p: tuple[int, int]) -> float:
        return self.angle[p] / max(self.count[p], 1)


def _plan(stack: Stack, in_scope: set[int], config: LayerDropConfig) -> tuple[int, list[int], int]:
    """(units to drop, units in scope, block size) for one stack; units are aligned blocks of layers."""
    if stack.no_drop:
        raise PassError(f"pass {config.name!r}: {stack.no_drop}")
    block = stack.drop_block
    n = stack.n_active()
    n_units = n // block
    allowed = [u for u in range(n_units) if all(u * block + j in in_scope for j in range(block))]
    unit = "layers" if block == 1 else f"blocks of {block} layers"
    if config.num_layers:
        if config.num_layers % block:
            raise config.error("num_layers", f"{stack.name} drops layers in aligned blocks of {block} (a self-"
                                             f"attention layer and the cross-attention layer(s) after it, with "
                                             f"their action-expert layers); {config.num_layers} is not a multiple "
                                             f"of {block}")
        k = config.num_layers // block
    else:
        k = math.floor(n_units * config.ratio)
    if k == 0:
        raise config.error("ratio", f"{config.ratio} of {stack.name}'s {n_units} {unit} drops no layer")
    if k >= n_units:
        unused = f"; the last {len(stack.layers) - n} never run" if len(stack.layers) > n else ""
        raise config.error("num_layers", f"cannot drop {k * block} of {stack.name}'s {n} layers "
                                         f"(at least one {'layer' if block == 1 else 'block'} must stay{unused})")
    if k > len(allowed):
        raise config.error("num_layers", f"{k} {unit} requested but only {len(allowed)} of {stack.name}'s {unit} "
                                         f"are in scope ({[u * block for u in allowed]})")
    for layer in stack.layers:
        check_layer_float(layer)
    if stack.drop_with is not None:
        for layer in stack.drop_with.layers:
            check_layer_float(layer)
    return k, allowed, block


def drop_layers(vla: Any, config: LayerDropConfig, context: PassContext) -> Any:
    """Drop the lowest-scoring layers (or blocks) of each stack in scope, rebuild the smaller stack and
    write its new depth into the family's config."""
    plans = []
    for stack, idx in scoped_layers(vla, config):
        k, allowed, block = _plan(stack, set(idx), config)
        score = stack.score_on or stack
        n_units = stack.n_active() // block
        pairs = [(u * block, (u + 1) * block) for u in range(n_units)]
        if config.metric == "angular":
            pairs = [(s * block, (s + k) * block) for s in range(n_units - k + 1)]
        stream = _Stream(score.n_active() + 1, pairs)
        plans.append((stack, k, allowed, block, stream, score))
    handles = []
    try:
        for stack, _, _, _, stream, score in plans:
            for b, (module, kind) in enumerate(score.taps()):
                reg = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
                handles.append(reg(stream.hook(b, kind)))
        run(vla, context.calibration)
    finally:
        for h in handles:
            h.remove()

    for stack, k, allowed, block, stream, score in plans:
        if not all(stream.fired) or not all(stream.count.values()):
            raise PassError(f"pass {config.name!r}: some {score.name} layers never ran on the calibration data")
        if config.metric == "block_influence":
            scores = [stream.influence(p) for p in stream.pairs]
            drop_units = sorted(sorted(allowed, key=lambda u: scores[u])[:k])
        else:
            scores = [stream.distance(p) for p in stream.pairs]
            starts = [s for s in range(len(scores)) if all(s + j in allowed for j in range(k))]
            if not starts:
                raise config.error("where.include", f"no {k} consecutive layers of {stack.name} are all in scope")
            best = min(starts, key=lambda s: scores[s])
            drop_units = list(range(best, best + k))
        drop = [u * block + j for u in drop_units for j in range(block)]
        keep = [i for i in range(len(stack.layers)) if i not in drop]
        for s in [stack] + ([stack.drop_with] if stack.drop_with is not None else []):
            layers = s.layers
            setattr(s.owner, s.attr, type(layers)([layers[i] for i in keep]))
        sync_config(vla, stack)
        context.notes[stack.name] = {"metric": config.metric, "dropped": drop, "kept": keep,
                                     "scores": [round(s, 6) for s in scores]}
        if stack.drop_with is not None:
            context.notes[stack.name]["dropped_with"] = {stack.drop_with.name: drop}
    return vla
