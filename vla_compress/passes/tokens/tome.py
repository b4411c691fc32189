"""token-merge: ToMe bipartite soft matching inside the SigLIP encoder (Bolya et al. 2023).

After each encoder layer the tokens are split alternately into sets A and B; every A token finds
its most similar B token (cosine of the layer's attention keys); the r most similar pairs are
merged (size-weighted average), and later layers use proportional attention (log(size) added to
the attention logits) so a merged token counts for the patches it stands for. r is fixed per
layer, so shapes are static.

Why "unmerge" by default: the reference projector merges each 2x2 block of patches by pixel
unshuffle, which needs the full patch grid. At the encoder output every merged token is copied
back to all patches it covers (ToMe's "unmerge", as in ToMe for Stable Diffusion), restoring the
grid: the encoder does fewer FLOPs (layers after the first see fewer tokens), the backbone is
unchanged. "reduce" hands the merged tokens to the backbone directly (only for token_merge = 1
models): fewer backbone tokens too, in a data-dependent (but fixed-count) order.

Deviation from the paper: merging happens between layers (after the MLP) rather than between a
layer's attention and its MLP, so the HF layer modules run unchanged.

Persisted beside the weights: ToMe changes the computation, not the weights, so save_pretrained
records the per-layer schedule and the mode in compression.json and from_pretrained wraps the
encoder again (passes/checkpoint.py); in "reduce" mode config.json's visual_token_budget holds the
reduced count the reloaded model produces.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..base import PassContext
from .config import TokenMergeConfig


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


def schedule(n_tokens: int, n_layers: int, config: TokenMergeConfig) -> list[int]:
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


def merge_tokens(vla: Any, config: TokenMergeConfig, context: PassContext) -> Any:
    if vla.family != "reference":
        from .tome_families import merge_tokens_family

        return merge_tokens_family(vla, config, context)
    cfg = vla.cfg
    ve = vla.vision_encoder
    if isinstance(ve.encoder, ToMeEncoder):
        raise config.error("where", "the vision encoder already merges tokens (apply token-merge once)")
    n_patches, n_layers = cfg.vision.num_patches, len(ve.encoder.layers)
    rs = schedule(n_patches, n_layers, config)
    if sum(rs) == 0:
        raise config.error("ratio", f"merges no token of {n_patches} patches over {n_layers} layers")
    if config.mode == "reduce":
        if cfg.token_merge != 1:
            raise config.error("mode", f"'reduce' hands merged tokens to the projector, whose token_merge="
                                       f"{cfg.token_merge} pixel unshuffle needs the full patch grid; use 'unmerge'")
        if vla.visual_keep.numel() or cfg.visual_token_budget:
            raise config.error("mode", "'reduce' cannot follow visual-token-prune (its keep set indexes patches)")
    ve.encoder = ToMeEncoder(ve.encoder, rs, unmerge=config.mode == "unmerge")
    out_tokens = n_patches - sum(rs)
    if config.mode == "reduce":
        # every camera's image goes through the merging ViT: out_tokens each
        new_cfg = replace(cfg, visual_token_budget=out_tokens * cfg.vision.num_cameras)
        vla.cfg = new_cfg
        vla.processor.cfg = new_cfg
    context.notes.update({"r_per_layer": rs,
                          "encoder_tokens_per_layer": [n_patches - sum(rs[:i]) for i in range(n_layers)],
                          "encoder_output_tokens": out_tokens, "mode": config.mode, "persisted": False})
    return vla
