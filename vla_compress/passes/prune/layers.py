"""layer-drop: remove whole transformer layers by ShortGPT block influence or angular distance.

ShortGPT (Men et al. 2024): a layer whose output is nearly parallel to its input changes little;
BI_i = 1 - E_t[cos(h_i,t, h_i+1,t)]. Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the
Deeper Layers"): the block of n consecutive layers whose input and output are closest in angle,
d(l, n) = E_t[arccos(cos(h_l,t, h_l+n,t))] / pi, is removed as a whole. Both are measured on the
calibration observations over every token position of a policy step.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import PassError
from ..base import PassContext, scoped_components, scoped_modules
from ..calibration import run
from .config import LayerDropConfig
from .surgery import LAYER_PREFIX, check_float, layer_stack, sync_config


class _Angles:
    """Forward hooks on every layer of a stack accumulating E_t[cos] (per layer) and
    E_t[arccos cos / pi] (per block of n layers ending at each layer)."""

    def __init__(self, n_layers: int, block: int):
        self.block = block
        self.cos = [0.0] * n_layers
        self.angle = [0.0] * n_layers  # indexed by the block's first layer
        self.count = [0] * n_layers
        self.inputs: dict[int, Any] = {}

    def hook(self, i: int):
        import torch.nn.functional as F

        def fn(module, args, output):
            h_in = args[0].detach().float()
            h_out = (output[0] if isinstance(output, tuple) else output).detach().float()
            self.inputs[i] = h_in
            self.cos[i] += F.cosine_similarity(h_in, h_out, dim=-1).sum().item()
            self.count[i] += h_in.shape[0] * h_in.shape[1]
            start = i - self.block + 1
            if start >= 0 and start in self.inputs:
                c = F.cosine_similarity(self.inputs[start], h_out, dim=-1).clamp(-1, 1)
                self.angle[start] += (c.acos() / math.pi).sum().item()
            if i == len(self.cos) - 1:
                self.inputs.clear()
        return fn

    def block_influence(self) -> list[float]:
        return [1.0 - c / max(n, 1) for c, n in zip(self.cos, self.count)]

    def block_distance(self) -> list[float]:
        return [a / max(n, 1) for a, n in zip(self.angle, self.count)]


def drop_layers(vla: Any, config: LayerDropConfig, context: PassContext) -> Any:
    plans = {}
    for comp in scoped_components(vla, config):
        layers = layer_stack(vla, comp)
        n = len(layers)
        names = {f"{LAYER_PREFIX[comp]}.{i}": layer for i, layer in enumerate(layers)}
        allowed = [int(k.rsplit(".", 1)[1]) for k in scoped_modules(vla, config, candidates=names)]
        k = config.num_layers or math.floor(n * config.ratio)
        if k == 0:
            raise config.error("ratio", f"{config.ratio} of {comp}'s {n} layers drops no layer")
        if k >= n:
            raise config.error("num_layers", f"cannot drop {k} of {comp}'s {n} layers (at least one must stay)")
        if k > len(allowed):
            raise config.error("num_layers", f"{k} layers requested but only {len(allowed)} of {comp}'s layers "
                                             f"are in scope ({allowed})")
        for layer in layers:
            check_float(*(m for m in layer.modules() if "Linear" in type(m).__name__))
        plans[comp] = (k, allowed, _Angles(n, k))
    hooks = {}
    for comp, (_, _, angles) in plans.items():
        for i, layer in enumerate(layer_stack(vla, comp)):
            hooks[layer] = angles.hook(i)
    run(vla, context.calibration, hooks, pre=False)

    for comp, (k, allowed, angles) in plans.items():
        layers = layer_stack(vla, comp)
        if config.metric == "block_influence":
            scores = angles.block_influence()
            drop = sorted(sorted(allowed, key=lambda i: scores[i])[:k])
        else:
            scores = angles.block_distance()
            starts = [s for s in range(len(layers) - k + 1) if all(s + j in allowed for j in range(k))]
            if not starts:
                raise config.error("where.include", f"no {k} consecutive layers of {comp} are all in scope")
            best = min(starts, key=lambda s: scores[s])
            drop = list(range(best, best + k))
        if any(angles.count[i] == 0 for i in allowed):
            raise PassError(f"pass {config.name!r}: some {comp} layers never ran on the calibration data")
        keep = [i for i in range(len(layers)) if i not in drop]
        layers_new = type(layers)([layers[i] for i in keep])
        if comp == "backbone":
            vla.backbone.layers = layers_new
        else:
            vla.vision_encoder.encoder.layers = layers_new
        sync_config(vla, comp)
        context.notes[comp] = {"metric": config.metric, "dropped": drop, "kept": keep,
                               "scores": [round(s, 6) for s in scores]}
    return vla
