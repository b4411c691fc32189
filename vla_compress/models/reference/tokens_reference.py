"""Token reduction hooks of the reference family (the family spec's `tokens` capability).

visual-token-prune: the generic FastV ranking on its HF Llama backbone (passes/tokens/fastv.py); the
keep set is the `visual_keep` buffer (index_select after the projector, in the state dict) and
config.json records the budget, so the reloaded model produces the same token count.

token-merge: `nn.tome.ToMeEncoder` wraps the SigLIP encoder. "unmerge" by default: the projector
merges each 2x2 block of patches by pixel unshuffle, which needs the full patch grid, so every
merged token is copied back to the patches it covers (the encoder does fewer FLOPs, the backbone is
unchanged). "reduce" hands the merged tokens to the backbone directly (only for token_merge = 1
models): fewer backbone tokens too, and config.json's visual_token_budget holds the reduced count.
Merging happens between layers (after the MLP) rather than between a layer's attention and its
MLP, so the HF layer modules run unchanged (a deviation from the paper).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...nn.tome import ToMeEncoder, schedule


def _set_cfg(vla: Any, **changes: Any) -> None:
    new_cfg = replace(vla.cfg, **changes)
    vla.cfg = new_cfg
    vla.processor.cfg = new_cfg


def full_visual_tokens(vla: Any) -> int:
    """Visual tokens before the keep set: every camera's patches after the projector's merge, or
    after ToMe when it hands merged tokens on ("reduce")."""
    v, encoder = vla.cfg.vision, vla.vision_encoder.encoder
    if isinstance(encoder, ToMeEncoder) and not encoder.unmerge:
        return v.num_cameras * (v.num_patches - sum(encoder.r))
    return v.num_cameras * v.num_patches // (vla.cfg.token_merge ** 2)


def record_visual_budget(vla: Any, budget: int) -> None:
    _set_cfg(vla, visual_token_budget=budget)


def tome_state(vla: Any) -> dict | None:
    encoder = vla.vision_encoder.encoder
    if not isinstance(encoder, ToMeEncoder):
        return None
    return {"r_per_layer": {"encoder": [int(r) for r in encoder.r]}, "mode": "unmerge" if encoder.unmerge else "reduce"}


def install_tome(vla: Any, merge: dict) -> None:
    """Wrap the encoder as recorded (a tome_state dict; ValueError when it does not fit the model)."""
    rs = merge.get("r_per_layer") if isinstance(merge, dict) else None
    if not isinstance(rs, dict) or set(rs) != {"encoder"} or merge.get("mode") not in ("unmerge", "reduce"):
        raise ValueError(f"expected {{'r_per_layer': {{'encoder': [ints]}}, 'mode': 'unmerge'|'reduce'}}, got {merge!r}")
    ve = vla.vision_encoder
    if isinstance(ve.encoder, ToMeEncoder):
        raise ValueError("the vision encoder already merges tokens")
    r, n_layers = rs["encoder"], len(ve.encoder.layers)
    if not isinstance(r, list) or len(r) != n_layers or not all(isinstance(v, int) and v >= 0 for v in r):
        raise ValueError(f"encoder: r_per_layer must be {n_layers} integers >= 0 (the vision encoder has "
                         f"{n_layers} layers), got {r!r}")
    ve.encoder = ToMeEncoder(ve.encoder, r, unmerge=merge["mode"] == "unmerge")


def merge_tokens(vla: Any, config: Any, context: Any) -> Any:
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
    if config.mode == "reduce":  # every camera's image goes through the merging ViT: out_tokens each
        _set_cfg(vla, visual_token_budget=out_tokens * cfg.vision.num_cameras)
    context.notes.update({"r_per_layer": rs,
                          "encoder_tokens_per_layer": [n_patches - sum(rs[:i]) for i in range(n_layers)],
                          "encoder_output_tokens": out_tokens, "mode": config.mode, "persisted": True})
    return vla
