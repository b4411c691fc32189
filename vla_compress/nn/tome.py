"""ToMe (Bolya et al. 2023) building blocks shared by every family's token-merge.

Bipartite soft matching: after a layer the tokens are split alternately into sets A and B; every A
token finds its most similar B token (cosine of the layer's attention keys); the r most similar
pairs are merged (size-weighted average), and later layers use proportional attention (log(size)
added to the attention logits) so a merged token counts for the patches it stands for. r is fixed
per layer, so shapes are static. "unmerge" copies every merged token back to each patch it covers
at the encoder output (the grid a projector needs); "reduce" hands the merged tokens on.

Two ways a family's encoder merges: `ToMeEncoder` wraps an HF SigLIP encoder (same `layers`, so the
state dict keeps its names); or an encoder module changes class in place to a family subclass that
runs `merge_loop` (`swapped_state` / `install_swapped` / `merge_swapped` act on those). Either way
the schedule is saved to token_reduction.json (checkpoint/tokens.py) and re-applied on load.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def bipartite_merge(x: torch.Tensor, keys: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, r: int):
    """Merge r token pairs. x (B, N, D), keys (B, N, Dk), size (B, N), assign (B, N0): for every
    original token the index of the current token holding it. Returns the three, updated."""
    b, n, d = x.shape
    m = keys / keys.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    scores = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)  # (B, Na, Nb)
    node_max, node_idx = scores.max(-1)
    order = node_max.argsort(-1, descending=True)
    src_idx = order[:, :r]  # A tokens merged into their best B token
    unm_idx = order[:, r:].sort(-1).values  # A tokens kept, in their original order
    dst_idx = node_idx.gather(1, src_idx)
    xs = x * size[..., None]
    xa, xb = xs[:, ::2], xs[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    expand = lambda idx: idx[..., None].expand(-1, -1, d)  # noqa: E731
    xb = xb.scatter_add(1, expand(dst_idx), xa.gather(1, expand(src_idx)))
    sb = sb.scatter_add(1, dst_idx, sa.gather(1, src_idx))
    new_size = torch.cat([sa.gather(1, unm_idx), sb], 1)
    new_x = torch.cat([xa.gather(1, expand(unm_idx)), xb], 1) / new_size[..., None]
    nu, nb = unm_idx.shape[1], xb.shape[1]
    ar = lambda k: torch.arange(k, device=x.device).expand(b, k)  # noqa: E731
    map_a = torch.empty(b, xa.shape[1], dtype=torch.long, device=x.device)
    map_a.scatter_(1, unm_idx, ar(nu))
    map_a.scatter_(1, src_idx, nu + dst_idx)
    cur_to_new = torch.empty(b, n, dtype=torch.long, device=x.device)
    cur_to_new[:, ::2], cur_to_new[:, 1::2] = map_a, nu + ar(nb)
    return new_x.to(x.dtype), new_size, cur_to_new.gather(1, assign)


class ToMeEncoder(nn.Module):
    """Drop-in for SiglipEncoder: same `layers` (so the state dict keeps its names), ToMe between
    layers. `r[i]` tokens are merged after layer i."""

    def __init__(self, encoder: nn.Module, r: list[int], unmerge: bool):
        super().__init__()
        self.config = encoder.config
        self.layers = encoder.layers
        self.gradient_checkpointing = False
        self.r, self.unmerge = list(r), unmerge

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutput

        x = inputs_embeds
        b, n0, d = x.shape
        size = x.new_ones(b, n0, dtype=torch.float32)
        assign = torch.arange(n0, device=x.device).expand(b, n0)
        for i, layer in enumerate(self.layers):
            keys: dict[str, torch.Tensor] = {}
            handle = layer.self_attn.k_proj.register_forward_hook(lambda m, a, o: keys.__setitem__("k", o))
            n = x.shape[1]
            bias = size.log().to(x.dtype)[:, None, None, :].expand(b, 1, n, n)  # proportional attention
            try:
                x = layer(x, bias, **kwargs)
            finally:
                handle.remove()
            x = x[0] if isinstance(x, tuple) else x
            r = self.r[i] if i < len(self.r) else 0
            if r > 0:
                x, size, assign = bipartite_merge(x, keys["k"].detach(), size, assign, r)
        if self.unmerge:
            x = x.gather(1, assign[..., None].expand(-1, -1, d))
        return BaseModelOutput(last_hidden_state=x)


def schedule(n_tokens: int, n_layers: int, config: Any) -> list[int]:
    """Tokens merged after each layer: r everywhere, or ratio * n_tokens spread evenly; never more
    than half of the tokens present at that layer (bipartite matching pairs A with B)."""
    total = config.r * n_layers if config.r else math.floor(n_tokens * config.ratio)
    rs, n = [], n_tokens
    for i in range(n_layers):
        want = config.r if config.r else total // n_layers + (i < total % n_layers)
        r = min(want, n // 2)
        rs.append(r)
        n -= r
    return rs


def _attention(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor):
    """Proportional attention of (B, H, N, Dh) q/k/v: logits + log(size) of each key."""
    bias = size.log().to(q.dtype)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    b, n, _ = x.shape
    return out.transpose(1, 2).reshape(b, n, -1), k.mean(1)


def timm_block(block: Any, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """modeling_vit.Block with proportional attention; returns (output, keys averaged over heads)."""
    a = block.attn
    b, n, _ = x.shape
    # head width from the projection, not width // heads: width-pruning removes whole heads
    q, k, v = a.qkv(block.norm1(x)).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
    out, keys = _attention(x, q, k, v, size)
    x = x + block.ls1(a.proj(out))
    return x + block.ls2(block.mlp(block.norm2(x))), keys


def siglip_layer(layer: Any, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """modeling_vision.VisionLayer with proportional attention; returns (output, mean keys)."""
    a = layer.self_attn
    b, n, _ = x.shape
    h = layer.layer_norm1(x)
    heads = lambda t: t.view(b, n, a.num_heads, -1).transpose(1, 2)  # noqa: E731
    out, keys = _attention(x, heads(a.q_proj(h)), heads(a.k_proj(h)), heads(a.v_proj(h)), size)
    x = x + a.out_proj(out)
    return x + layer.mlp(layer.layer_norm2(x)), keys


def merge_loop(x: torch.Tensor, layers: list, run: Any, rs: list[int], prefix: int) -> torch.Tensor:
    """Run `layers` merging rs[i] patch pairs after layer i (tokens [:prefix] never merge); returns
    the patch tokens unmerged to the full grid."""
    b, n, d = x.shape
    size = x.new_ones(b, n, dtype=torch.float32)
    assign = torch.arange(n - prefix, device=x.device).expand(b, n - prefix)
    for i, layer in enumerate(layers):
        x, keys = run(layer, x, size)
        r = rs[i] if i < len(rs) else 0
        if r > 0:
            patches, psize, assign = bipartite_merge(x[:, prefix:], keys[:, prefix:].detach(), size[:, prefix:],
                                                     assign, r)
            x, size = torch.cat([x[:, :prefix], patches], 1), torch.cat([size[:, :prefix], psize], 1)
    patches = x[:, prefix:]
    return patches.gather(1, assign[..., None].expand(-1, -1, d))


def swapped_state(encoders: dict) -> dict | None:
    """{"r_per_layer": {encoder: [...]}, "mode": "unmerge"} when an encoder merges, else None."""
    rs = {name: list(m.tome_r) for name, (m, cls, _, _) in encoders.items() if isinstance(m, cls)}
    return {"r_per_layer": rs, "mode": "unmerge"} if rs else None


def install_swapped(encoders: dict, merge: dict) -> None:
    """Put ToMe on the encoders named in `merge` (a tome_state dict); ValueError when it does not fit."""
    if not isinstance(merge, dict) or merge.get("mode") != "unmerge" or not isinstance(merge.get("r_per_layer"), dict):
        raise ValueError(f"expected {{'r_per_layer': {{encoder: [ints]}}, 'mode': 'unmerge'}}, got {merge!r}")
    known = encoders
    for name, rs in merge["r_per_layer"].items():
        if name not in known:
            raise ValueError(f"unknown encoder {name!r} (this model has {', '.join(known)})")
        module, cls, n_tokens, n_layers = known[name]
        if not isinstance(rs, list) or len(rs) != n_layers or not all(isinstance(r, int) and r >= 0 for r in rs):
            raise ValueError(f"{name}: r_per_layer must be {n_layers} integers >= 0, got {rs!r}")
        left = n_tokens
        for r in rs:
            if r > left // 2:
                raise ValueError(f"{name}: cannot merge {r} pairs of {left} tokens")
            left -= r
        module.__class__ = cls
        module.tome_r = list(rs)


def merge_swapped(encoders: dict, config: Any, context: Any, reduce_refused: str) -> None:
    """token-merge on encoders that swap class in place (unmerge mode only): `encoders` as
    `swapped_state` takes them, `reduce_refused` "<family>: why "reduce" is impossible"."""
    if config.mode != "unmerge":
        raise config.error("mode", f"'reduce' is not possible for {reduce_refused}; use 'unmerge'")
    found = encoders
    if any(isinstance(m, cls) for m, cls, _, _ in found.values()):
        raise config.error("where", "the vision encoder already merges tokens (apply token-merge once)")
    rs = {}
    for name, (_, _, n_tokens, n_layers) in found.items():
        # merge points: after every layer but the last (a merge there is undone at once by the unmerge)
        r = schedule(n_tokens, max(n_layers - 1, 0), config) + [0]
        if sum(r) == 0:
            raise config.error("ratio" if config.ratio else "r", f"merges no token of the {name}'s {n_tokens} "
                                                                 f"patches over its {n_layers} layers")
        rs[name] = r
    install_swapped(encoders, {"r_per_layer": rs, "mode": "unmerge"})
    context.notes.update({
        "mode": "unmerge", "r_per_layer": rs,
        "encoder_tokens_per_layer": {n: [found[n][2] - sum(r[:i]) for i in range(len(r))] for n, r in rs.items()},
        "encoder_output_tokens": {n: found[n][2] for n in rs}, "persisted": True})
