"""visual-token-prune: a static set of visual tokens chosen by attention (FastV-style ranking).

FastV (Chen et al. 2024) observes that after the first couple of layers most visual tokens get
little attention, and drops the least-attended ones at layer K for each input. Here the ranking is
FastV's -- mean attention from the non-visual positions (prompt, proprio, action queries, and each
decoded action token) to each visual token at backbone layer K -- but aggregated over the
calibration set into ONE keep set, applied from the backbone's input (the model's `visual_keep`
index_select after the projector). Static shapes: exports and KV caches keep fixed sizes, and the
keep set is part of the checkpoint.

The keep set indexes the visual tokens of every camera / image, in order. The ranking above is
the default for HF Llama backbones (layout BOS [visual] prompt [proprio] [action]: rows after the
visual block at layer K, every decode step); a family whose prefix differs ranks with its own
`rank_visual_tokens` and counts with `full_visual_tokens` (its `tokens` capability, e.g. SmolVLA's
[images][language][state] prefix read by the action expert). A family that records the budget in
its config does so in `record_visual_budget`. The keep set is saved to token_reduction.json.

Not done (future work): the dynamic per-observation variant (rank per input at layer K, keep the
first K layers at full length) -- it needs a backbone that changes sequence length mid-stack, which
the HF Llama forward and the static-shape exports do not support.
"""

from __future__ import annotations

from typing import Any

from ...errors import PassError
from ...models.registry import family_of
from ..base import PassContext
from ..calibration import run
from .config import VisualTokenPruneConfig


def prune_visual_tokens(vla: Any, config: VisualTokenPruneConfig, context: PassContext) -> Any:
    import torch

    n_layers = len(vla.backbone.layers)
    if config.layer >= n_layers:
        raise config.error("layer", f"the backbone has {n_layers} layers; layer must be below that")
    old_keep = vla.visual_keep
    vla.visual_keep = torch.zeros(0, dtype=torch.long, device=old_keep.device)  # rank every token
    try:
        spec = family_of(vla)
        if spec.has_hook("tokens", "rank_visual_tokens"):
            full = spec.hook("tokens", "full_visual_tokens")(vla)
            score, rows = spec.hook("tokens", "rank_visual_tokens")(vla, config.layer, context.calibration, full, run)
        else:
            first = next(iter(context.calibration))
            with torch.no_grad():
                pixels = first["pixel_values"].to(next(vla.parameters()).dtype)
                full = vla.visual_tokens(pixels).shape[1]
            score, rows = rank_llama(vla, config.layer, context.calibration, full)
    finally:
        vla.visual_keep = old_keep
    budget = config.budget or max(1, round(full * config.keep_ratio))
    if budget > full:
        raise config.error("budget", f"{budget} is more than the {full} visual tokens the model produces")
    if score is None:
        raise PassError(f"pass {config.name!r}: backbone layer {config.layer} never ran on the calibration data")
    score = score / max(rows, 1)
    keep = torch.sort(torch.topk(score, budget).indices).values
    vla.visual_keep = keep.to(old_keep.device)
    if spec.has_hook("tokens", "record_visual_budget"):  # a family whose config records the budget
        spec.hook("tokens", "record_visual_budget")(vla, budget)
    context.notes.update({"visual_tokens_before": full, "visual_tokens_after": budget, "layer": config.layer,
                          "kept": keep.tolist(),
                          "attention_mass_kept": round(float(score[keep].sum() / score.sum()), 4)})
    return vla


def rank_llama(vla: Any, layer: int, calibration: Any, n_vis: int) -> tuple[Any, int]:
    """Summed attention (mean over heads) that visual tokens 1..n_vis (after BOS) receive from the
    positions after them at HF Llama backbone layer `layer`, over every prefill and decode step;
    and the number of query rows summed."""
    attn = vla.backbone.layers[layer].self_attn
    hf = vla.backbone.config
    old_impl = hf._attn_implementation
    state: dict[str, Any] = {"score": None, "rows": 0}

    def hook(module, args, output):
        w = output[1]  # (B, heads, q, k): eager attention returns the probabilities
        q, k = w.shape[-2], w.shape[-1]
        rows = w[..., 1 + n_vis:, :] if q == k else w  # prefill: non-visual rows; decode: the new token
        s = rows[..., 1:1 + n_vis].float().mean(1).sum((0, 1))  # mean over heads, sum over rows
        state["score"] = s if state["score"] is None else state["score"] + s
        state["rows"] += rows.shape[0] * rows.shape[-2]

    try:
        hf._attn_implementation = "eager"  # sdpa does not return attention probabilities
        run(vla, calibration, {attn: hook}, pre=False)
    finally:
        hf._attn_implementation = old_impl
    return state["score"], state["rows"]
