"""Structured pruning of the reference family: its layer stacks and how a pruned shape is written back.

Stacks: backbone (HF Llama, GQA), vision_encoder (HF SigLIP).
Write-back: config.json backbone/vision num_layers, and uniform sizes as scalars or per-layer
tuples (layer_num_heads, layer_num_kv_heads, layer_intermediate_sizes).
"""

from __future__ import annotations

from typing import Any

from ...nn.stacks import Stack, fix_llama


def stacks(vla: Any) -> list[Stack]:
    b, v = vla.cfg.backbone, vla.cfg.vision
    ve = vla.vision_encoder
    return [Stack("backbone", "backbone", "backbone.layers", vla.backbone, "layers", b.attention_head_dim,
                  (b.num_heads, b.num_kv_heads, b.intermediate_size)),
            Stack("vision_encoder", "vision_encoder", "vision_encoder.encoder.layers", ve.encoder, "layers",
                  v.attention_head_dim, (v.num_heads, v.num_heads, v.intermediate_size), out_proj="out_proj",
                  gated_mlp=False, has_kv=False, entry="layer_norm1", bias=True)]


def sync(vla: Any, stack: Stack) -> None:
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
        fix_llama(vla.backbone, n)
    else:
        vla.vision_encoder.config.num_hidden_layers = n
