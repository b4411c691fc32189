"""SmolVLM's vision side, named as in the checkpoint (`vlm.model.vision_model`, `vlm.model.connector`).

Vision encoder (SigLIP as adapted by Idefics3/SmolVLM): a stride-p convolution into patches, a
learned position table over the (image_size / p)^2 grid, pre-norm blocks
    x + out_proj(attn(layer_norm1 x)),  x + fc2(gelu_tanh(fc1(layer_norm2 x)))
with full (unmasked) attention, then `post_layernorm`. An image of another side than the table's
reads the table at bucketed fractional coordinates (SmolVLM's NaViT-style rule: patch (r, c) of an
R x C grid takes row bucket of r / R and column bucket of c / C among num_patches_per_side buckets);
for the native size that is the identity. The rule depends only on the configured image size, so it
is evaluated once here, not per call.

Connector: pixel shuffle by s (each s x s block of patches becomes one token whose feature vector is
the block's patch features in row-major order, (r * s + c) * D + d), then one bias-free Linear to
the text width: 1024 patches -> 64 tokens of 960 for SmolVLA-base.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_smolvla import VisionConfig


def bucketed_position_ids(grid_h: int, grid_w: int, per_side: int) -> torch.Tensor:
    """Position-table rows of a grid_h x grid_w patch grid (float32 arithmetic, as SmolVLM does)."""
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side, dtype=torch.float32, device="cpu")

    def buckets(n: int) -> torch.Tensor:
        coords = torch.arange(n, dtype=torch.float32, device="cpu") * (1.0 / torch.tensor(float(n), device="cpu"))
        return torch.bucketize(coords.clamp(max=1.0 - 1e-6), boundaries, right=True)

    return (buckets(grid_h)[:, None] * per_side + buckets(grid_w)[None, :]).reshape(-1)


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig, input_size: int):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        per_side = cfg.image_size // cfg.patch_size
        self.position_embedding = nn.Embedding(per_side**2, cfg.hidden_size)
        grid = input_size // cfg.patch_size
        # a CPU constant, moved to the input's device per call (survives meta-device builds)
        self._position_ids = bucketed_position_ids(grid, grid, per_side)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        if x.shape[1] != self._position_ids.numel():
            raise ValueError(f"expected {self._position_ids.numel()} patches, got {x.shape[1]} "
                             f"(images of {pixel_values.shape[-2]}x{pixel_values.shape[-1]})")
        return x + self.position_embedding(self._position_ids.to(x.device))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        # head width from the projection (-1), not d // num_heads: width-pruning removes whole heads
        heads = lambda t: t.view(b, n, self.num_heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.approximate = "tanh" if cfg.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class VisionLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SmolVLMVision(nn.Module):
    """(N, 3, S, S) images in [-1, 1] -> (N, (S / p)^2, D) patch features."""

    def __init__(self, cfg: VisionConfig, input_size: int):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg, input_size)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


class SimpleProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Connector(nn.Module):
    """Pixel shuffle by `scale`, then `modality_projection.proj` to the text width."""

    def __init__(self, vision_dim: int, text_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.modality_projection = SimpleProjection(vision_dim * scale * scale, text_dim)

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        n, seq, d = x.shape
        side, s = int(round(seq**0.5)), self.scale
        if side * side != seq or side % s:
            raise ValueError(f"pixel shuffle by {s} needs a square grid divisible by {s}, got {seq} patches")
        x = x.reshape(n, side // s, s, side // s, s, d).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (side // s) ** 2, s * s * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.modality_projection(self.pixel_shuffle(x))
