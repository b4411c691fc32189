"""Model surgery on a family's layer stacks (stacks.py): slicing Linear layers to keep some heads / MLP
channels, and resizing layers to recorded pruned shapes when a checkpoint is loaded.

Every attention module here infers its head count from the projection widths (HF Llama/SigLIP view
`(..., -1, head_dim)`; timm's `Attention` and SmolVLA's modules reshape with -1), so slicing the
projections is enough apart from the few attributes set per layer: HF Llama's
`num_key_value_groups` (the repeat_kv factor), and `num_heads` / `num_kv_heads` where a module has them.
"""

from __future__ import annotations

from typing import Any

from ..errors import PassError
from .stacks import Stack


def check_float(*linears: Any) -> None:
    """Refuse modules that are not plain float nn.Linear (quantized ones cannot be sliced)."""
    from torch import nn

    for lin in linears:
        if type(lin) is not nn.Linear:
            raise PassError(f"cannot prune a {type(lin).__name__}: apply structured pruning before quantization")


def check_layer_float(layer: Any) -> None:
    """check_float on every Linear-like module of one layer."""
    check_float(*(m for m in layer.modules() if "Linear" in type(m).__name__))


def select_linear(lin: Any, out_idx: Any = None, in_idx: Any = None):
    """A new nn.Linear holding the chosen output rows / input columns of `lin`."""
    from torch import nn

    check_float(lin)
    w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if out_idx is not None:
        w = w.index_select(0, out_idx.to(w.device))
        b = None if b is None else b.index_select(0, out_idx.to(w.device))
    if in_idx is not None:
        w = w.index_select(1, in_idx.to(w.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def head_channels(heads: list[int], hd: int):
    """Output-channel indices of the given heads (each `hd` wide)."""
    import torch

    return torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads]) if heads else torch.zeros(0, dtype=torch.long)


def _set_head_counts(attn: Any, heads: int, kv: int) -> None:
    if hasattr(attn, "num_heads"):
        attn.num_heads = heads
    if hasattr(attn, "num_kv_heads"):
        attn.num_kv_heads = kv
    if hasattr(attn, "num_key_value_groups"):
        attn.num_key_value_groups = heads // kv


def keep_heads(stack: Stack, layer: Any, q_heads: list[int], kv_heads: list[int]) -> None:
    """Keep query heads `q_heads` and KV heads `kv_heads` of one layer, in order. Query head i of
    the result uses KV head i // (len(q) / len(kv)), as repeat_kv expects."""
    import torch

    attn, hd = stack.attention(layer), stack.head_dim
    q_idx = head_channels(sorted(q_heads), hd)
    if stack.fused_qkv:  # rows [q | k | v], each heads * hd wide
        width = attn.qkv.out_features // 3
        attn.qkv = select_linear(attn.qkv, torch.cat([q_idx, q_idx + width, q_idx + 2 * width]))
        attn.proj = select_linear(attn.proj, None, q_idx)
        _set_head_counts(attn, len(q_heads), len(q_heads))
        return
    if not stack.has_kv:
        kv_heads = q_heads
    if len(q_heads) % len(kv_heads):
        raise PassError(f"internal: {len(q_heads)} query heads do not split over {len(kv_heads)} KV heads")
    kv_idx = head_channels(sorted(kv_heads), hd)
    attn.q_proj = select_linear(attn.q_proj, q_idx)
    attn.k_proj = select_linear(attn.k_proj, kv_idx)
    attn.v_proj = select_linear(attn.v_proj, kv_idx)
    setattr(attn, stack.out_proj, select_linear(getattr(attn, stack.out_proj), None, q_idx))
    _set_head_counts(attn, len(q_heads), len(kv_heads))


def keep_channels(stack: Stack, layer: Any, channels: Any) -> None:
    """Keep MLP hidden channels `channels` (a sorted LongTensor) of one layer."""
    mlp = layer.mlp
    if stack.gated_mlp:
        mlp.gate_proj, mlp.up_proj = select_linear(mlp.gate_proj, channels), select_linear(mlp.up_proj, channels)
        mlp.down_proj = select_linear(mlp.down_proj, None, channels)
    else:
        mlp.fc1, mlp.fc2 = select_linear(mlp.fc1, channels), select_linear(mlp.fc2, None, channels)


def _linear_like(old: Any, in_f: int, out_f: int):
    from torch import nn

    return nn.Linear(in_f, out_f, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def resize_layer(stack: Stack, layer: Any, heads: int, kv: int, inter: int) -> None:
    """Give one freshly built layer (before its weights are loaded) the projections of a pruned size."""
    attn, hd = stack.attention(layer), stack.head_dim
    if stack.fused_qkv:
        d = attn.qkv.in_features
        if attn.qkv.out_features != 3 * heads * hd:
            attn.qkv, attn.proj = _linear_like(attn.qkv, d, 3 * heads * hd), _linear_like(attn.proj, heads * hd, d)
        _set_head_counts(attn, heads, heads)
    else:
        kv = kv if stack.has_kv else heads
        out = getattr(attn, stack.out_proj)
        if attn.q_proj.out_features != heads * hd or attn.k_proj.out_features != kv * hd:
            attn.q_proj = _linear_like(attn.q_proj, attn.q_proj.in_features, heads * hd)
            attn.k_proj = _linear_like(attn.k_proj, attn.k_proj.in_features, kv * hd)
            attn.v_proj = _linear_like(attn.v_proj, attn.v_proj.in_features, kv * hd)
            setattr(attn, stack.out_proj, _linear_like(out, heads * hd, out.out_features))
        _set_head_counts(attn, heads, kv)
    mlp = layer.mlp
    up = mlp.gate_proj if stack.gated_mlp else mlp.fc1
    if up.out_features != inter:
        d = up.in_features
        if stack.gated_mlp:
            mlp.gate_proj, mlp.up_proj = _linear_like(mlp.gate_proj, d, inter), _linear_like(mlp.up_proj, d, inter)
            mlp.down_proj = _linear_like(mlp.down_proj, inter, d)
        else:
            mlp.fc1, mlp.fc2 = _linear_like(mlp.fc1, d, inter), _linear_like(mlp.fc2, inter, d)
