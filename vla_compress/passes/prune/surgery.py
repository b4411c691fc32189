"""Model surgery for the reference family: where the layers are, slicing Linear layers, and writing
the new sizes back into the config so save_pretrained / from_pretrained rebuild the same shapes.

Layouts (transformers 5.x): Llama decoder layers at `backbone.layers` (self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj, no biases); SigLIP encoder layers at `vision_encoder.encoder.layers`
(self_attn.{q,k,v,out}_proj, mlp.fc1/fc2, with biases). Both attention modules infer the head
count from the projection widths (`view(..., -1, head_dim)`), so slicing the projections is enough
apart from Llama's `num_key_value_groups` (the repeat_kv factor) which is set per layer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import PassError

LAYER_PREFIX = {"backbone": "backbone.layers", "vision_encoder": "vision_encoder.encoder.layers"}


def layer_stack(vla: Any, component: str):
    if component == "backbone":
        return vla.backbone.layers
    if component == "vision_encoder":
        return vla.vision_encoder.encoder.layers
    raise PassError(f"component {component!r} has no prunable layer stack (prunable: {', '.join(LAYER_PREFIX)})")


def head_dim(vla: Any, component: str) -> int:
    return (vla.cfg.backbone if component == "backbone" else vla.cfg.vision).attention_head_dim


def check_float(*linears: Any) -> None:
    from torch import nn

    for lin in linears:
        if type(lin) is not nn.Linear:
            raise PassError(f"cannot prune a {type(lin).__name__}: apply structured pruning before quantization")


def select_linear(lin: Any, out_idx: Any = None, in_idx: Any = None):
    """A new nn.Linear holding the chosen output rows / input columns of `lin`."""
    from torch import nn

    check_float(lin)
    w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx)
        b = None if b is None else b.index_select(0, out_idx)
    if in_idx is not None:
        w = w.index_select(1, in_idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def head_channels(heads: list[int], hd: int):
    import torch

    return torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]) if heads else torch.zeros(0, dtype=torch.long)


def keep_heads(layer: Any, component: str, q_heads: list[int], kv_heads: list[int], hd: int) -> None:
    """Keep query heads `q_heads` and (backbone) KV heads `kv_heads` of one layer, in order.
    Query head i of the result uses KV head i // (len(q) / len(kv)), as repeat_kv expects."""
    attn = layer.self_attn
    q_idx = head_channels(sorted(q_heads), hd)
    if component == "vision_encoder":
        attn.q_proj, attn.k_proj, attn.v_proj = (select_linear(getattr(attn, n), q_idx)
                                                 for n in ("q_proj", "k_proj", "v_proj"))
        attn.out_proj = select_linear(attn.out_proj, None, q_idx)
        attn.num_heads = len(q_heads)
        return
    kv_idx = head_channels(sorted(kv_heads), hd)
    if len(q_heads) % len(kv_heads):
        raise PassError(f"internal: {len(q_heads)} query heads do not split over {len(kv_heads)} KV heads")
    attn.q_proj = select_linear(attn.q_proj, q_idx)
    attn.k_proj = select_linear(attn.k_proj, kv_idx)
    attn.v_proj = select_linear(attn.v_proj, kv_idx)
    attn.o_proj = select_linear(attn.o_proj, None, q_idx)
    attn.num_key_value_groups = len(q_heads) // len(kv_heads)


def keep_channels(layer: Any, component: str, channels: Any) -> None:
    """Keep MLP hidden channels `channels` (a sorted LongTensor) of one layer."""
    mlp = layer.mlp
    if component == "vision_encoder":
        mlp.fc1, mlp.fc2 = select_linear(mlp.fc1, channels), select_linear(mlp.fc2, None, channels)
    else:
        mlp.gate_proj, mlp.up_proj = select_linear(mlp.gate_proj, channels), select_linear(mlp.up_proj, channels)
        mlp.down_proj = select_linear(mlp.down_proj, None, channels)


def layer_sizes(vla: Any, component: str) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, MLP width) of every layer, read from the modules."""
    hd = head_dim(vla, component)
    out = []
    for layer in layer_stack(vla, component):
        a, m = layer.self_attn, layer.mlp
        if component == "vision_encoder":
            out.append((a.q_proj.out_features // hd, a.q_proj.out_features // hd, m.fc1.out_features))
        else:
            out.append((a.q_proj.out_features // hd, a.k_proj.out_features // hd, m.gate_proj.out_features))
    return out


def sync_config(vla: Any, component: str) -> None:
    """Write the component's layer count and sizes (read from the modules) into `vla.cfg`, the
    processor's copy and the HF config; fix Llama's layer_idx (the KV-cache slot of each layer)."""
    sizes = layer_sizes(vla, component)
    n = len(sizes)
    heads, kvs, inters = (tuple(s[i] for s in sizes) for i in range(3))
    cfg = vla.cfg
    sub = cfg.backbone if component == "backbone" else cfg.vision
    changes: dict[str, Any] = {"num_layers": n}
    uniform = len(set(sizes)) == 1
    if heads != (sub.num_heads,) * n or (component == "backbone" and kvs != (sub.num_kv_heads,) * n):
        changes["head_dim"] = sub.attention_head_dim  # heads keep their width when some are removed
    if uniform:
        changes.update(num_heads=heads[0], intermediate_size=inters[0], layer_num_heads=(),
                       layer_intermediate_sizes=())
        if component == "backbone":
            changes.update(num_kv_heads=kvs[0], layer_num_kv_heads=())
    else:  # scalars keep the unpruned base shape; the tuples give every layer's actual size
        changes.update(layer_num_heads=heads, layer_intermediate_sizes=inters)
        if component == "backbone":
            changes["layer_num_kv_heads"] = kvs
    new_sub = replace(sub, **changes)
    new_cfg = replace(cfg, backbone=new_sub) if component == "backbone" else replace(cfg, vision=new_sub)
    vla.cfg = new_cfg
    vla.processor.cfg = new_cfg
    if component == "backbone":
        vla.backbone.config.num_hidden_layers = n  # LlamaModel runs layers[:num_hidden_layers]
        for i, layer in enumerate(vla.backbone.layers):
            layer.self_attn.layer_idx = i
    else:
        vla.vision_encoder.config.num_hidden_layers = n
