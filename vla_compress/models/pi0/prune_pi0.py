"""Structured pruning of π0 / π0.5: their layer stacks and how a pruned shape is written back.

Stacks: vision_encoder (SigLIP), backbone (Gemma 2B) and action_head (the Gemma 300M expert).
At every layer the expert's queries attend to [backbone K/V ; expert K/V] of the same layer index,
so (as for SmolVLA) the KV heads of neither stack may be removed (query heads and MLP channels may:
the layers are multi-query, one KV head each), and a backbone layer is dropped only together with
the expert layer paired with it (blocks of one: every layer pair has the same joint-attention role).
The last backbone layer only produces keys/values for the expert, so its output projection and MLP
are not scored (they never run at inference).
Write-back: config.json's `vla_compress.architecture` (paligemma.depth and action_expert.depth
together, vision.num_layers) and per-layer sizes as `vla_compress.layer_sizes`; LeRobot's own keys
are left as they are (its variant names cannot express a pruned network).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ...errors import ConfigError, PassError
from ...nn.stacks import Stack, sizes_entry
from .configuration_pi0 import SETTINGS_KEY, Pi0Arch, Pi0Config


def stacks(vla: Any) -> list[Stack]:
    arch = vla.arch
    b, e, v = arch.backbone, arch.expert, arch.vision
    expert = vla.action_head.expert
    locked = ("π0's action expert attends to the backbone's keys/values at every layer (one KV head each): "
              "KV heads cannot be removed; use gqa: query_heads")
    head = Stack("action_head", "action_head", "action_head.expert.layers", expert, "layers", e.head_dim,
                 (e.num_heads, e.num_kv_heads, e.mlp_dim), kv_locked=locked, exit=(expert.norm, "pre"),
                 no_drop="π0's action-expert layers are dropped only together with the backbone layers they "
                         "attend to: use where: backbone")
    backbone = Stack("backbone", "backbone", "backbone.layers", vla.backbone, "layers", b.head_dim,
                     (b.num_heads, b.num_kv_heads, b.mlp_dim), kv_locked=locked,
                     width_active=len(vla.backbone.layers) - 1, drop_with=head, drop_block=1, score_on=head)
    vision = Stack("vision_encoder", "vision_encoder", "vision_encoder.encoder.layers", vla.vision_encoder.encoder,
                   "layers", v.hidden_size // v.num_heads, (v.num_heads, v.num_heads, v.intermediate_size),
                   out_proj="out_proj", gated_mlp=False, has_kv=False, entry="layer_norm1", bias=True)
    return [vision, backbone, head]


def sync(vla: Any, stack: Stack) -> None:
    """Depths into `vla_compress.architecture`, per-layer sizes into `vla_compress.layer_sizes`."""
    raw = json.loads(json.dumps(vla.cfg.raw))
    settings = dict(raw.get(SETTINGS_KEY) or {})
    arch = dict(settings.get("architecture") or {})
    layer_sizes = dict(settings.get("layer_sizes") or {})
    for s in [stack] + ([stack.drop_with] if stack.drop_with is not None else []):
        entry = sizes_entry(s, s.sizes())
        if entry is None:
            layer_sizes.pop(s.name, None)
        else:
            layer_sizes[s.name] = entry
    if stack.component == "backbone":
        for key in ("paligemma", "action_expert"):
            arch[key] = {**(arch.get(key) or {}), "depth": len(stack.layers)}
    elif stack.component == "vision_encoder":
        arch["vision"] = {**(arch.get("vision") or {}), "num_layers": len(stack.layers)}
    settings["architecture"] = arch
    if layer_sizes:
        settings["layer_sizes"] = layer_sizes
    else:
        settings.pop("layer_sizes", None)
    raw[SETTINGS_KEY] = settings
    try:
        cfg = dataclasses.replace(Pi0Config.from_dict(raw), preset=vla.cfg.preset)
        new = Pi0Arch.from_config(cfg)
    except ConfigError as e:
        raise PassError(f"pruned π0 config is invalid: {e}") from None
    if len(vla.backbone.layers) != len(vla.action_head.expert.layers):
        raise PassError("internal: the backbone and the action expert no longer have one layer each per depth")
    vla.arch, vla.cfg, vla.processor.cfg = new, cfg, cfg
