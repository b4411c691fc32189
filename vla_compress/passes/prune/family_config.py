"""Writing a pruned stack's sizes back into its family's config, so that `save_pretrained` ->
`from_pretrained` rebuilds the pruned shapes; the original checkpoint format is kept otherwise.

reference     config.json backbone/vision: num_layers, and uniform sizes as scalars or per-layer
              tuples (layer_num_heads, layer_num_kv_heads, layer_intermediate_sizes)
openvla(-oft) text_config.num_hidden_layers always; a uniformly pruned Llama also as text_config
              num_attention_heads / num_key_value_heads / intermediate_size (+ head_dim when the
              heads no longer fill hidden_size); a ViT's depth as `vla_compress.vision_backbone_overrides`
              depth; every other size (non-uniform Llama layers, ViT heads / MLP widths) as
              `vla_compress.layer_sizes` {stack: [[heads, kv_heads, mlp], ...]}, read by the loader
smolvla       policy config.json num_vlm_layers (and num_expert_layers when it is set); the vision
              depth in the VLM's config.json (vision_config.num_hidden_layers, carried as vlm/);
              per-layer sizes as `vla_compress.layer_sizes` in the policy config.json
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ...errors import ConfigError, PassError
from .layout import Stack

SETTINGS_KEY = "vla_compress"


def _sizes_entry(stack: Stack, sizes: list[tuple[int, int, int]]) -> list[list[int]] | None:
    return None if all(s == stack.base for s in sizes) else [list(s) for s in sizes]


def _fix_llama(model: Any, n: int) -> None:
    """HF LlamaModel runs layers[:num_hidden_layers]; layer_idx is each layer's KV-cache slot."""
    model.config.num_hidden_layers = n
    for i, layer in enumerate(model.layers):
        layer.self_attn.layer_idx = i


def sync_reference(vla: Any, stack: Stack) -> None:
    """ReferenceConfig's backbone / vision sizes (scalars when uniform, per-layer tuples otherwise)."""
    from dataclasses import replace

    sizes = stack.sizes()
    n = len(sizes)
    heads, kvs, inters = (tuple(s[i] for s in sizes) for i in range(3))
    cfg = vla.cfg
    backbone = stack.component == "backbone"
    sub = cfg.backbone if backbone else cfg.vision
    changes: dict[str, Any] = {"num_layers": n}
    if heads != (sub.num_heads,) * n or (backbone and kvs != (sub.num_kv_heads,) * n):
        changes["head_dim"] = sub.attention_head_dim  # heads keep their width when some are removed
    if len(set(sizes)) == 1:
        changes.update(num_heads=heads[0], intermediate_size=inters[0], layer_num_heads=(),
                       layer_intermediate_sizes=())
        if backbone:
            changes.update(num_kv_heads=kvs[0], layer_num_kv_heads=())
    else:  # scalars keep the unpruned base shape; the tuples give every layer's actual size
        changes.update(layer_num_heads=heads, layer_intermediate_sizes=inters)
        if backbone:
            changes["layer_num_kv_heads"] = kvs
    new_sub = replace(sub, **changes)
    new_cfg = replace(cfg, backbone=new_sub) if backbone else replace(cfg, vision=new_sub)
    vla.cfg = new_cfg
    vla.processor.cfg = new_cfg
    if backbone:
        _fix_llama(vla.backbone, n)
    else:
        vla.vision_encoder.config.num_hidden_layers = n


def sync_openvla(vla: Any, stack: Stack) -> None:
    """OpenVLA's text_config / vision_backbone_overrides / layer_sizes (see the module docstring)."""
    from ...models.openvla.configuration_openvla import OpenVLAConfig

    sizes = stack.sizes()
    n = len(sizes)
    d = vla.cfg.to_dict()
    settings = dict(d.get(SETTINGS_KEY) or {})
    layer_sizes = dict(settings.get("layer_sizes") or {})
    if stack.component == "backbone":
        text = d["text_config"] = dict(d.get("text_config") or {})
        text["num_hidden_layers"] = n
        if len(set(sizes)) == 1:
            h, kv, inter = sizes[0]
            text.update(num_attention_heads=h, num_key_value_heads=kv, intermediate_size=inter)
            hidden = int(vla.cfg.llama["hidden_size"])
            if h * stack.head_dim != hidden or "head_dim" in text:
                text["head_dim"] = stack.head_dim
            layer_sizes.pop(stack.name, None)
        else:  # text_config keeps the base shape the loader builds; every layer's size is recorded
            layer_sizes[stack.name] = [list(s) for s in sizes]
    else:
        branch = stack.extra["branch"]
        overrides = [dict(o) for o in settings.get("vision_backbone_overrides") or [{} for _ in vla.cfg.vision]]
        overrides[branch]["depth"] = n
        settings["vision_backbone_overrides"] = overrides
        entry = _sizes_entry(stack, sizes)
        if entry is None:
            layer_sizes.pop(stack.name, None)
        else:
            layer_sizes[stack.name] = entry
    settings["layer_sizes"] = layer_sizes
    d[SETTINGS_KEY] = settings
    try:
        cfg = OpenVLAConfig.from_dict(d)
    except ConfigError as e:
        raise PassError(f"pruned OpenVLA config is invalid: {e}") from None
    vla.cfg = cfg
    if stack.component == "backbone":
        vla.language_model.config.num_hidden_layers = n
        _fix_llama(vla.language_model.model, n)
    else:
        stack.owner.spec = cfg.vision[stack.extra["branch"]]  # depth -> feature_layer (second-to-last block)


def sync_smolvla(vla: Any, stack: Stack) -> None:
    """SmolVLA's num_vlm_layers / VLM vision depth / layer_sizes; re-derives the layer plan."""
    from ...models.smolvla.configuration_smolvla import SmolVLAArch, SmolVLAConfig, VLMConfig

    raw = dict(vla.cfg.raw)
    vlm_raw = json.loads(json.dumps(vla.arch.vlm.raw))
    settings = dict(raw.get(SETTINGS_KEY) or {})
    layer_sizes = dict(settings.get("layer_sizes") or {})
    touched = [stack] + ([stack.drop_with] if stack.drop_with is not None else [])
    for s in touched:
        entry = _sizes_entry(s, s.sizes())
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


_SYNC = {"reference": sync_reference, "openvla": sync_openvla, "openvla-oft": sync_openvla, "smolvla": sync_smolvla}


def sync_config(vla: Any, stack: Stack) -> None:
    """Write `stack`'s current layer count and sizes (read from the modules) into the family's config."""
    _SYNC[vla.family](vla, stack)
