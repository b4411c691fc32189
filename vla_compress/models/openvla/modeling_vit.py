"""The two ViTs of OpenVLA's vision backbone (DINOv2 ViT-L/14 with registers, SigLIP So400m/14),
written from timm's documented math with timm's parameter names, so `vision_backbone.featurizer.*`
and `vision_backbone.fused_featurizer.*` tensors load unchanged.

Per block (pre-norm):  x = x + ls1(attn(norm1(x)));  x = x + ls2(mlp(norm2(x)))
with ls = LayerScale (DINOv2) or identity (SigLIP), mlp = fc2(GELU(fc1(.))), exact GELU.
Tokens: patch_embed (conv, stride = patch) -> [cls][registers][patches] with the position
embedding added to the patches only when `no_embed_class` (DINOv2-reg4), else to everything.

OpenVLA reads the output of the second-to-last block (timm `get_intermediate_layers(n={depth-2})`,
no final norm) and drops the prefix tokens. Blocks after that one and the final `norm` (and
SigLIP's `attn_pool` head) are in the checkpoint but do not affect the features, so they are
kept as weights and never run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_openvla import ViTSpec


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major patch order


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # head width from the projection (-1), not dim // num_heads: width-pruning removes whole heads
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class LayerScale(nn.Module):
    """Per-channel scale. The parameter is `scale_factor`, not timm's `gamma`: OpenVLA's HF export
    renames it because transformers rewrites parameter names containing "gamma" when loading."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        d = spec.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=spec.norm_eps)
        self.attn = Attention(d, spec.num_heads)
        self.ls1 = LayerScale(d) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=spec.norm_eps)
        self.mlp = Mlp(d, spec.mlp_dim)
        self.ls2 = LayerScale(d) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's attention-pooling head (timm `attn_pool`): one latent query attending over the tokens.
    OpenVLA never runs it; it exists so the checkpoint's `attn_pool.*` tensors load and round-trip."""

    def __init__(self, dim: int, mlp_dim: int, eps: float):
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim)


class TimmViT(nn.Module):
    """A timm VisionTransformer (num_classes=0) returning OpenVLA's patch features (B, N, D)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.spec = spec
        d = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if spec.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, d)) if spec.reg_tokens else None
        n_pos = spec.num_patches if spec.no_embed_class else spec.num_patches + spec.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, n_pos, d) * 0.02)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=spec.norm_eps)
        self.attn_pool = AttentionPoolLatent(d, spec.mlp_dim, spec.norm_eps) if spec.attn_pool else None

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus prefix tokens and position embeddings (timm `_pos_embed`)."""
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.spec.no_embed_class:
            return torch.cat(prefix + [x + self.pos_embed], dim=1)
        return torch.cat(prefix + [x], dim=1) + self.pos_embed

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.spec.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"{self.spec.timm_id} expects {size}x{size} images, got {tuple(pixel_values.shape[-2:])}")
        x = self.tokens(pixel_values)
        for block in self.blocks[: self.spec.feature_layer + 1]:
            x = block(x)
        return x[:, self.spec.num_prefix_tokens:]
