"""PaliGemma's vision side, named as in the checkpoint (`paligemma.model.vision_tower.vision_model`,
`paligemma.model.multi_modal_projector`).

SigLIP (so400m/14 in π0): a stride-p convolution into patches plus a learned position table over
the (S / p)^2 grid (position ids 0..N-1: the image always has the configured size), pre-norm blocks
    x + out_proj(attn(layer_norm1 x)),  x + fc2(gelu_tanh(fc1(layer_norm2 x)))
with full (unmasked) softmax(q k^T / sqrt(d)) attention, then `post_layernorm` (PaliGemma uses no
pooling head). The projector is one Linear (with bias) from the vision width to the backbone width;
its output is used unscaled (transformers' Gemma scales only the word embeddings by sqrt(width)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pi0 import VisionSize


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionSize, image_size: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.num_patches = (image_size // cfg.patch_size) ** 2
        self.position_embedding = nn.Embedding(self.num_patches, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"expected {self.num_patches} patches, got {x.shape[1]} (images of "
                             f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]})")
        return x + self.position_embedding.weight[None]


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionSize):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # head width from the projection (-1): width-pruning removes whole heads
        heads = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
        out = torch.matmul(probs.to(v.dtype), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionSize):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    def __init__(self, cfg: VisionSize):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionSize):
        super().__init__()
        self.layers = nn.ModuleList(SiglipLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVision(nn.Module):
    """(N, 3, S, S) images in [-1, 1] -> (N, (S / p)^2, D) patch features."""

    def __init__(self, cfg: VisionSize, image_size: int):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg, image_size)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


class Projector(nn.Module):
    """PaliGemma's multi_modal_projector: `linear`, vision width -> backbone width."""

    def __init__(self, vision_dim: int, width: int):
        super().__init__()
        self.linear = nn.Linear(vision_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
