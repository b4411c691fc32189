"""Structured pruning of SmolVLA: its layer stacks and how a pruned shape is written back.

Stacks: vision_encoder (SigLIP), backbone (VLM text layers), action_head (expert layers).
The expert attends to the VLM's per-layer keys/values: self-attention layers concatenate them with
the expert's own (same KV heads), cross-attention layers read them as k_proj/v_proj inputs. So KV
heads of neither stack may be removed (query heads and MLP channels may), and VLM layers are
dropped only together with the expert layers paired with them, in aligned blocks of
`self_attn_every_n_layers` layers (one self- and one cross-attention layer for SmolVLA-base) so the
interleaving stays as built.
Write-back: policy config.json num_vlm_layers (and num_expert_layers when it is set); the vision
depth in the VLM's config.json (vision_config.num_hidden_layers, carried as vlm/); per-layer sizes
as `vla_compress.layer_sizes` in the policy config.json.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ...errors import ConfigError, PassError
from ...nn.stacks import Stack, sizes_entry
from .configuration_smolvla import SmolVLAArch, SmolVLAConfig, VLMConfig

SETTINGS_KEY = "vla_compress"


def stacks(vla: Any) -> list[Stack]:
    arch = vla.arch
    t, v = arch.vlm.text, arch.vlm.vision
    expert = vla.action_head.lm_expert
    locked = ("SmolVLA's action expert reads the VLM's keys/values at every layer (concatenated in its "
              "self-attention layers, as k/v inputs in its cross-attention layers): KV heads cannot be "
              "removed; use gqa: query_heads")
    one_to_one = arch.expert_layers == arch.vlm_layers
    n = arch.policy.self_attn_every_n_layers
    block = n if arch.cross and n > 0 else 1
    head = Stack("action_head", "action_head", "action_head.lm_expert.layers", expert, "layers", t.head_dim,
                 (t.num_heads, t.num_kv_heads, arch.expert_intermediate), kv_locked=locked,
                 exit=(expert.norm, "pre"), bias=t.attention_bias,
                 no_drop="SmolVLA's action-expert layers are dropped only together with the VLM layers they "
                         "attend to: use where: backbone")
    backbone = Stack("backbone", "backbone", "backbone.layers", vla.backbone, "layers", t.head_dim,
                     (t.num_heads, t.num_kv_heads, t.intermediate_size), kv_locked=locked,
                     width_active=len(vla.backbone.layers) - 1, bias=t.attention_bias,
                     drop_with=head, drop_block=block, score_on=head,
                     no_drop="" if one_to_one else
                     f"SmolVLA with {arch.expert_layers} expert layers for {arch.vlm_layers} VLM layers: layer-drop "
                     "needs one expert layer per VLM layer")
    vision = Stack("vision_encoder", "vision_encoder", "vision_encoder.encoder.layers", vla.vision_encoder.encoder,
                   "layers", v.hidden_size // v.num_heads, (v.num_heads, v.num_heads, v.intermediate_size),
                   out_proj="out_proj", gated_mlp=False, has_kv=False, entry="layer_norm1", bias=True)
    return [vision, backbone, head]


def sync(vla: Any, stack: Stack) -> None:
    """SmolVLA's num_vlm_layers / VLM vision depth / layer_sizes; re-derives the layer plan."""

    raw = dict(vla.cfg.raw)
    vlm_raw = json.loads(json.dumps(vla.arch.vlm.raw))
    settings = dict(raw.get(SETTINGS_KEY) or {})
    layer_sizes = dict(settings.get("layer_sizes") or {})
    touched = [stack] + ([stack.drop_with] if stack.drop_with is not None else [])
    for s in touched:
        entry = sizes_entry(s, s.sizes())
        if entry is None:
            layer_sizes.pop(s.name, None)
        else:
            layer_sizes[s.name] = entry
    if stack.component == "backbone":
        raw["num_vlm_layers"] = len(stack.layers)
        if int(raw.get("num_expert_layers") or 0) > 0:
            raw["num_expert_layers"] = len(stack.drop_with.layers)
    elif stack.component == "vision_encoder":
        vlm_raw["vision_config"] = {**vlm_raw.get("vision_config", {}), "num_hidden_layers": len(stack.layers)}
    if layer_sizes:
        raw[SETTINGS_KEY] = {**settings, "layer_sizes": layer_sizes}
    elif settings:
        settings.pop("layer_sizes", None)
        raw[SETTINGS_KEY] = settings
        if not settings:
            raw.pop(SETTINGS_KEY)
    try:
        cfg = dataclasses.replace(SmolVLAConfig.from_dict(raw), preset=vla.cfg.preset)
        vlm = VLMConfig.from_dict(vlm_raw)
        arch = SmolVLAArch(cfg, vlm)
    except ConfigError as e:
        raise PassError(f"pruned SmolVLA config is invalid: {e}") from None
    for j, layer in enumerate(vla.action_head.lm_expert.layers):  # the interleaving must be the one built
        want = arch.kv_dim if arch.expert_is_cross(j) else arch.expert_hidden
        if layer.self_attn.k_proj.in_features != want:
            raise PassError(f"internal: expert layer {j} no longer matches its {'cross' if arch.expert_is_cross(j) else 'self'}"
                            "-attention role after pruning")
    vla.arch, vla.cfg, vla.processor.cfg = arch, cfg, cfg
    vla.action_head.plan = arch.plan
    if stack.component == "vision_encoder":
        vla.vlm_files["config.json"] = (json.dumps(vlm_raw, indent=2) + "\n").encode()
