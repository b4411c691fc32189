"""token-merge (ToMe) inside the vision encoders of OpenVLA / OpenVLA-OFT and SmolVLA.

Both families' projectors need the full patch grid, so only ToMe's "unmerge" mode applies: tokens
are merged between encoder layers (bipartite soft matching on the attention keys, averaged over
heads as in ToMe, size-weighted averages, proportional attention log(size) on the logits) and, at
the encoder output, every merged token is copied back to each patch it covers.

OpenVLA's fused backbone runs two ViTs (DINOv2 with registers, SigLIP) on the same image and
concatenates their features per patch. Each ViT merges on its own schedule and unmerges before the
concatenation, so patch p of one is concatenated with patch p of the other, as without ToMe.
DINOv2's CLS and register tokens never merge (only patches enter the matching; prefix tokens keep
size 1 in the proportional attention). Only the blocks OpenVLA runs (up to the second-to-last)
count; SmolVLA's connector pixel-shuffles the grid, hence unmerge there too. "reduce" (merged
tokens handed on to the backbone) is refused for both: it would break the per-patch concatenation
(OpenVLA) and the pixel shuffle (SmolVLA).

No merge after an encoder's last layer: the unmerge would follow at once, so it would only lose
detail without saving compute. The encoder modules change class in place (`ToMeTimmViT`,
`ToMeVisionEncoder`, subclasses that override `forward`), so parameter names, the state dict and
the checkpoint layout are untouched; passes/tokens/state.py saves the schedule beside the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...models.openvla.modeling_vit import TimmViT
from ...models.smolvla.modeling_vision import VisionEncoder
from .tome import bipartite_merge


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


def _merge_loop(x: torch.Tensor, layers: list, run: Any, rs: list[int], prefix: int) -> torch.Tensor:
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


class ToMeTimmViT(TimmViT):
    """TimmViT whose forward merges patch tokens between the blocks OpenVLA runs (`tome_r`)."""

    tome_r: list[int]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.spec.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"{self.spec.timm_id} expects {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        blocks = list(self.blocks[: self.spec.feature_layer + 1])
        return _merge_loop(self.tokens(pixel_values), blocks, timm_block, self.tome_r, self.spec.num_prefix_tokens)


class ToMeVisionEncoder(VisionEncoder):
    """SmolVLM's SigLIP encoder merging tokens between layers (`tome_r`), unmerged at the output."""

    tome_r: list[int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _merge_loop(x, list(self.layers), siglip_layer, self.tome_r, 0)


# --- which encoders a family has ---------------------------------------------------------------------

def encoders(vla: Any) -> dict[str, tuple[Any, type, int, int]]:
    """name -> (module, ToMe class, patch tokens, layers that run) for every encoder ToMe acts on."""
    if vla.family in ("openvla", "openvla-oft"):
        vb = vla.vision_backbone
        out = {}
        for name in ("featurizer", "fused_featurizer"):
            vit = getattr(vb, name)
            if vit is not None:
                out[name] = (vit, ToMeTimmViT, vit.spec.num_patches, vit.spec.feature_layer + 1)
        return out
    if vla.family == "smolvla":
        ve = vla.vision_encoder
        n = ve.embeddings._position_ids.numel()
        return {"encoder": (ve.encoder, ToMeVisionEncoder, n, len(ve.encoder.layers))}
    raise ValueError(f"no ToMe encoders known for family {vla.family!r}")


def tome_state(vla: Any) -> dict | None:
    """{"r_per_layer": {encoder: [...]}, "mode": "unmerge"} when an encoder merges, else None."""
    rs = {name: list(m.tome_r) for name, (m, cls, _, _) in encoders(vla).items() if isinstance(m, cls)}
    return {"r_per_layer": rs, "mode": "unmerge"} if rs else None


def install_tome(vla: Any, merge: dict) -> None:
    """Put ToMe on the encoders named in `merge` (a tome_state dict); ValueError when it does not fit."""
    if not isinstance(merge, dict) or merge.get("mode") != "unmerge" or not isinstance(merge.get("r_per_layer"), dict):
        raise ValueError(f"expected {{'r_per_layer': {{encoder: [ints]}}, 'mode': 'unmerge'}}, got {merge!r}")
    known = encoders(vla)
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


def merge_tokens_family(vla: Any, config: Any, context: Any) -> Any:
    """The token-merge pass for OpenVLA / OpenVLA-OFT / SmolVLA (unmerge mode only)."""
    from .tome import schedule

    if config.mode != "unmerge":
        why = ("its fused encoder concatenates DINOv2 and SigLIP features per patch, which needs both full "
               "patch grids" if vla.family != "smolvla" else "its connector pixel-shuffles the full patch grid")
        raise config.error("mode", f"'reduce' is not possible for {vla.family}: {why}; use 'unmerge'")
    found = encoders(vla)
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
    install_tome(vla, {"r_per_layer": rs, "mode": "unmerge"})
    context.notes.update({
        "mode": "unmerge", "r_per_layer": rs,
        "encoder_tokens_per_layer": {n: [found[n][2] - sum(r[:i]) for i in range(len(r))] for n, r in rs.items()},
        "encoder_output_tokens": {n: found[n][2] for n in rs}, "persisted": True})
    return vla
