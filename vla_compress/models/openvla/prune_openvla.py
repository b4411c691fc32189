"""Structured pruning of OpenVLA / OpenVLA-OFT: their layer stacks and how a pruned shape is written back.

Stacks: backbone (HF Llama in language_model.model), vision_encoder.featurizer (DINOv2) and
vision_encoder.fused_featurizer (SigLIP): timm blocks with fused qkv; only the blocks OpenVLA runs
(up to the second-to-last) are active.
Write-back: text_config.num_hidden_layers always; a uniformly pruned Llama also as text_config
num_attention_heads / num_key_value_heads / intermediate_size (+ head_dim when the heads no longer
fill hidden_size); a ViT's depth as `vla_compress.vision_backbone_overrides` depth; every other
size (non-uniform Llama layers, ViT heads / MLP widths) as `vla_compress.layer_sizes`
{stack: [[heads, kv_heads, mlp], ...]}, read by the loader.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, PassError
from ...nn.stacks import Stack, fix_llama, sizes_entry
from .configuration_openvla import SETTINGS_KEY, OpenVLAConfig


def stacks(vla: Any) -> list[Stack]:
    lm = vla.language_model.model
    c = vla.cfg.llama
    hd = int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
    out = [Stack("backbone", "backbone", "backbone.layers", lm, "layers", hd,
                 (int(c["num_attention_heads"]), int(c["num_key_value_heads"]), int(c["intermediate_size"])),
                 exit=(lm.norm, "pre"), bias=bool(c.get("attention_bias")))]
    vb = vla.vision_backbone
    for i, branch in enumerate(("featurizer", "fused_featurizer")):
        vit = getattr(vb, branch, None)
        if vit is None:
            continue
        s = vit.spec
        out.append(Stack(f"vision_encoder.{branch}", "vision_encoder", f"vision_encoder.{branch}.blocks", vit,
                         "blocks", s.embed_dim // s.num_heads, (s.num_heads, s.num_heads, s.mlp_dim), attn="attn",
                         fused_qkv=True, out_proj="proj", gated_mlp=False, has_kv=False,
                         active=s.feature_layer + 1, entry="norm1", bias=True, extra={"branch": i}))
    return out


def sync(vla: Any, stack: Stack) -> None:
    """OpenVLA's text_config / vision_backbone_overrides / layer_sizes (see the module docstring)."""

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
        entry = sizes_entry(stack, sizes)
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
        fix_llama(vla.language_model.model, n)
    else:
        stack.owner.spec = cfg.vision[stack.extra["branch"]]  # depth -> feature_layer (second-to-last block)
