"""Token reduction hooks of SmolVLA (the family spec's `tokens` capability).

visual-token-prune, FastV-style ranking of SmolVLA's visual tokens:
SmolVLA's prefix is [camera 1 tokens] ... [camera N tokens] [language] [state] (each camera's
tokens framed by [fake][global] ... [fake] when add_image_special_tokens); the action expert's
queries then read the prefix keys/values of every VLM layer, by self-attention over
[prefix; actions] or by cross-attention, at every Euler step. A visual token's score at VLM layer
K is the attention it receives, averaged over heads and summed over query rows, from
  - the real language and state rows of the prefill at layer K (the non-visual prefix positions),
  - the expert's action queries at the same depth (when an expert layer sits there), every step,
computed with the model's own attention arithmetic (`modeling_smolvla.attend`: GQA by repeating
KV heads, float32 logits scaled by head_dim^-0.5, masked entries excluded).
Image special tokens are always kept; `visual_keep` is applied in `embed_prefix` and saved to
token_reduction.json.

token-merge: SmolVLM's SigLIP encoder merges between layers and unmerges at its output, since the
connector pixel-shuffles the full patch grid ("reduce" is refused). The encoder changes class in
place (`ToMeVisionEncoder`), so parameter names and the checkpoint layout are untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from ...nn.tome import install_swapped, merge_loop, merge_swapped, siglip_layer, swapped_state
from .modeling_smolvla import apply_rope
from .modeling_vision import VisionEncoder

REDUCE_REFUSED = "its connector pixel-shuffles the full patch grid"


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (B, Lq, H, D), k (B, Lk, KV, D), mask (B, Lq, Lk) bool -> probabilities (B, H, Lq, Lk)."""
    groups = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(groups, dim=2) if groups > 1 else k
    scores = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1)) * q.shape[-1] ** -0.5
    scores = torch.where(mask[:, None], scores, torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1)


def full_visual_tokens(vla: Any) -> int:
    """Visual tokens of every camera, without the image special tokens (what a keep set indexes)."""
    specials = 3 if vla.cfg.add_image_special_tokens else 0
    return len(vla.cfg.image_features) * (vla.arch.tokens_per_image - specials)


def visual_positions(vla: Any, n_vis: int) -> tuple[torch.Tensor, int]:
    """Prefix index of every visual token (cameras in order) and the length of the image block."""
    n = len(vla.cfg.image_features)
    t = n_vis // n
    if not vla.cfg.add_image_special_tokens:
        return torch.arange(n_vis), n_vis
    per = t + 3
    idx = torch.arange(n_vis)
    return idx // t * per + 2 + idx % t, n * per


def rank_visual_tokens(vla: Any, layer: int, calibration: Any, n_vis: int, run: Any) -> tuple[torch.Tensor | None, int]:
    """(summed scores (n_vis,), query rows summed) over the calibration set; see the module docstring."""
    vis, img_len = visual_positions(vla, n_vis)
    vlm_layer = vla.backbone.layers[layer]
    plan = vla.action_head.plan[layer]
    expert = vla.action_head.lm_expert.layers[plan.expert] if plan.expert is not None else None
    state: dict[str, Any] = {"score": None, "rows": 0, "mask": None}

    def add(probs: torch.Tensor, row_mask: torch.Tensor) -> None:
        """probs (B, H, Lq, Lk): add the visual columns of the rows in row_mask (B, Lq)."""
        cols = probs[..., vis.to(probs.device)].mean(1)  # (B, Lq, n_vis)
        s = (cols * row_mask[..., None].float()).sum((0, 1))
        state["score"] = s if state["score"] is None else state["score"] + s
        state["rows"] += int(row_mask.sum())

    def pre_backbone(module, args):
        state["mask"] = args[1]  # TextModel.forward(embeds, mask, positions)

    original_qkv = vlm_layer.qkv

    def qkv(x, positions):
        q, k, v = original_qkv(x, positions)
        mask = state["mask"]
        probs = attention_probs(q[:, img_len:], k, mask[:, img_len:])
        add(probs, mask.diagonal(dim1=1, dim2=2)[:, img_len:])  # real (unpadded) language + state rows
        return q, k, v

    hooks: dict[Any, Any] = {vla.backbone: pre_backbone}
    if expert is not None:
        name = "self_step" if plan.kind == "self" else "cross_step"
        original_step = getattr(expert, name)

        def step(x, positions, prefix_kv, mask):
            a = expert.self_attn
            if plan.kind == "self":
                q, k, _ = expert.qkv(x, positions)
                keys = torch.cat([prefix_kv[0], k], dim=1)
            else:
                q = apply_rope(a.split(a.q_proj(expert.input_layernorm(x))), positions)
                pk = prefix_kv[0]
                keys = a.split(a.k_proj(pk.reshape(*pk.shape[:2], -1).to(a.k_proj.weight.dtype)))
            add(attention_probs(q, keys, mask), torch.ones(q.shape[:2], dtype=torch.bool, device=q.device))
            return original_step(x, positions, prefix_kv, mask)

        setattr(expert, name, step)
    vlm_layer.qkv = qkv
    try:
        run(vla, calibration, hooks)
    finally:
        del vlm_layer.qkv
        if expert is not None:
            delattr(expert, "self_step" if plan.kind == "self" else "cross_step")
    return state["score"], state["rows"]


class ToMeVisionEncoder(VisionEncoder):
    """SmolVLM's SigLIP encoder merging tokens between layers (`tome_r`), unmerged at the output."""

    tome_r: list[int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return merge_loop(x, list(self.layers), siglip_layer, self.tome_r, 0)


def encoders(vla: Any) -> dict[str, tuple[Any, type, int, int]]:
    ve = vla.vision_encoder
    n = ve.embeddings._position_ids.numel()
    return {"encoder": (ve.encoder, ToMeVisionEncoder, n, len(ve.encoder.layers))}


def tome_state(vla: Any) -> dict | None:
    return swapped_state(encoders(vla))


def install_tome(vla: Any, merge: dict) -> None:
    install_swapped(encoders(vla), merge)


def merge_tokens(vla: Any, config: Any, context: Any) -> Any:
    merge_swapped(encoders(vla), config, context, f"{vla.family}: {REDUCE_REFUSED}")
    return vla
