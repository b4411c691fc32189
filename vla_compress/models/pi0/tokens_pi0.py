"""Token reduction hooks of π0 / π0.5 (the family spec's `tokens` capability).

visual-token-prune, FastV-style ranking: the prefix is [camera 1 tokens] ... [camera N tokens]
[prompt] (no special tokens around images; π0.5's prompt holds the state), and at every backbone
layer the action expert's queries attend to [prefix K/V ; suffix K/V]. A visual token's score at
backbone layer K is the attention it receives, averaged over heads and summed over query rows, from
  - the real prompt rows of the prefill at layer K,
  - every suffix query of the expert's layer K (π0: the state token and the actions), every step,
with the model's own arithmetic (RoPE'd keys, softmax(q k^T / sqrt(d)) over the masked keys).
`visual_keep` is applied in `embed_prefix` after the projector and saved to token_reduction.json.

token-merge: SigLIP merges between layers and unmerges at its output (the prefix keeps one token per
patch); the encoder changes class in place (`ToMeSiglipEncoder`), so parameter names and the
checkpoint layout are untouched. "reduce" is refused: the keep set, the camera masks and the saved
token counts are laid out per patch of every camera.
"""

from __future__ import annotations

from typing import Any

import torch

from ...nn.tome import install_swapped, merge_loop, merge_swapped, siglip_layer, swapped_state
from .modeling_siglip import SiglipEncoder

REDUCE_REFUSED = "its prefix, keep set and saved token counts are laid out per patch of every camera"


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, Lq, H, D), k (B, Lk, KV, D), mask (B, Lq, Lk) bool -> probabilities (B, H, Lq, Lk)."""
    groups = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(groups, dim=2) if groups > 1 else k
    scores = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1)) * q.shape[-1] ** -0.5
    return torch.softmax(torch.where(mask[:, None], scores, torch.finfo(torch.float32).min), dim=-1)


def full_visual_tokens(vla: Any) -> int:
    """Visual tokens of every camera (what a keep set indexes)."""
    return len(vla.cfg.image_features) * vla.arch.tokens_per_image


def _suffix_mask(vla: Any, pad: torch.Tensor, s: int) -> torch.Tensor:
    """What each suffix query sees: the real prefix, then π0's [state][actions] / π0.5's [actions] block."""
    flags = [1] + [0] * (s - 1) if vla.arch.adaptive else [1, 1] + [0] * (s - 2)
    cum = torch.cumsum(torch.tensor(flags, device=pad.device), 0)
    among = (cum[None, :] <= cum[:, None])[None].expand(pad.shape[0], s, s)
    return torch.cat([pad[:, None, :].expand(pad.shape[0], s, pad.shape[1]), among], dim=2)


def rank_visual_tokens(vla: Any, layer: int, calibration: Any, n_vis: int, run: Any) -> tuple[torch.Tensor | None, int]:
    """(summed scores (n_vis,), query rows summed) over the calibration set; see the module docstring."""
    backbone_layer, expert_layer = vla.backbone.layers[layer], vla.action_head.expert.layers[layer]
    state: dict[str, Any] = {"score": None, "rows": 0, "mask": None, "prefix_k": None}

    def add(probs: torch.Tensor, rows: torch.Tensor) -> None:
        cols = probs[..., :n_vis].mean(1)  # (B, Lq, n_vis)
        s = (cols * rows[..., None].float()).sum((0, 1))
        state["score"] = s if state["score"] is None else state["score"] + s
        state["rows"] += int(rows.sum())

    def pre_backbone(module, args):
        state["mask"] = args[1]  # GemmaBackbone.forward(embeds, mask, positions)

    original_prefix, original_suffix = backbone_layer.qkv, expert_layer.qkv

    def prefix_qkv(x, positions, cond=None):
        q, k, v, gate = original_prefix(x, positions, cond)
        mask = state["mask"]
        state["prefix_k"], state["pad"] = k, mask.diagonal(dim1=1, dim2=2)
        add(attention_probs(q[:, n_vis:], k, mask[:, n_vis:]), state["pad"][:, n_vis:])  # real prompt rows
        return q, k, v, gate

    def suffix_qkv(x, positions, cond=None):
        q, k, v, gate = original_suffix(x, positions, cond)
        keys = torch.cat([state["prefix_k"].to(k.dtype), k], dim=1)
        mask = _suffix_mask(vla, state["pad"], q.shape[1])
        add(attention_probs(q, keys, mask), torch.ones(q.shape[:2], dtype=torch.bool, device=q.device))
        return q, k, v, gate

    backbone_layer.qkv, expert_layer.qkv = prefix_qkv, suffix_qkv
    try:
        run(vla, calibration, {vla.backbone: pre_backbone})
    finally:
        del backbone_layer.qkv, expert_layer.qkv
    return state["score"], state["rows"]


class ToMeSiglipEncoder(SiglipEncoder):
    """PaliGemma's SigLIP encoder merging tokens between layers (`tome_r`), unmerged at the output."""

    tome_r: list[int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return merge_loop(x, list(self.layers), siglip_layer, self.tome_r, 0)


def encoders(vla: Any) -> dict[str, tuple[Any, type, int, int]]:
    ve = vla.vision_encoder
    return {"encoder": (ve.encoder, ToMeSiglipEncoder, ve.embeddings.num_patches, len(ve.encoder.layers))}


def tome_state(vla: Any) -> dict | None:
    return swapped_state(encoders(vla))


def install_tome(vla: Any, merge: dict) -> None:
    install_swapped(encoders(vla), merge)


def record_visual_budget(vla: Any, budget: int) -> None:
    """The kept visual-token count as config.json's `vla_compress.visual_token_budget` (so an
    artifact's meta-device model, presets_pi0.meta_model_from_artifact, has the pruned prefix)."""
    import dataclasses

    from .configuration_pi0 import SETTINGS_KEY

    raw = dict(vla.cfg.raw)
    raw[SETTINGS_KEY] = {**(raw.get(SETTINGS_KEY) or {}), "visual_token_budget": int(budget)}
    cfg = dataclasses.replace(vla.cfg, raw=raw)
    vla.cfg, vla.processor.cfg, vla.arch = cfg, cfg, dataclasses.replace(vla.arch, policy=cfg)


def merge_tokens(vla: Any, config: Any, context: Any) -> Any:
    merge_swapped(encoders(vla), config, context, f"{vla.family}: {REDUCE_REFUSED}")
    return vla
