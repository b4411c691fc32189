"""Token reduction hooks of OpenVLA / OpenVLA-OFT (the family spec's `tokens` capability).

visual-token-prune: the generic FastV ranking on the HF Llama backbone (passes/tokens/fastv.py);
`visual_keep` is applied in `visual_tokens` and saved to token_reduction.json.

token-merge: OpenVLA's fused backbone runs two ViTs (DINOv2 with registers, SigLIP) on the same
image and concatenates their features per patch. Each ViT merges on its own schedule and unmerges
before the concatenation, so patch p of one is concatenated with patch p of the other, as without
ToMe. DINOv2's CLS and register tokens never merge (only patches enter the matching; prefix tokens
keep size 1 in the proportional attention). Only the blocks OpenVLA runs (up to the second-to-last)
count. "reduce" is refused: it would break the per-patch concatenation. The ViT modules change
class in place (`ToMeTimmViT`), so parameter names and the checkpoint layout are untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from ...nn.tome import install_swapped, merge_loop, merge_swapped, swapped_state, timm_block
from .modeling_vit import TimmViT

REDUCE_REFUSED = ("its fused encoder concatenates DINOv2 and SigLIP features per patch, which needs both full "
                  "patch grids")


class ToMeTimmViT(TimmViT):
    """TimmViT whose forward merges patch tokens between the blocks OpenVLA runs (`tome_r`)."""

    tome_r: list[int]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.spec.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"{self.spec.timm_id} expects {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        blocks = list(self.blocks[: self.spec.feature_layer + 1])
        return merge_loop(self.tokens(pixel_values), blocks, timm_block, self.tome_r, self.spec.num_prefix_tokens)


def encoders(vla: Any) -> dict[str, tuple[Any, type, int, int]]:
    """name -> (module, ToMe class, patch tokens, layers that run) for every ViT ToMe acts on."""
    vb = vla.vision_backbone
    out = {}
    for name in ("featurizer", "fused_featurizer"):
        vit = getattr(vb, name)
        if vit is not None:
            out[name] = (vit, ToMeTimmViT, vit.spec.num_patches, vit.spec.feature_layer + 1)
    return out


def tome_state(vla: Any) -> dict | None:
    return swapped_state(encoders(vla))


def install_tome(vla: Any, merge: dict) -> None:
    install_swapped(encoders(vla), merge)


def merge_tokens(vla: Any, config: Any, context: Any) -> Any:
    merge_swapped(encoders(vla), config, context, f"{vla.family}: {REDUCE_REFUSED}")
    return vla
