"""OpenVLA and OpenVLA-OFT networks, named as in the HF checkpoint (`vision_backbone`, `projector`,
`language_model`) and, for OFT, the separately saved `action_head` / `proprio_projector`.

OpenVLA (autoregressive, causal attention; openvla prismatic/extern/hf/modeling_prismatic.py):
    <s> [patches] In: What action should the robot take to {instr}?\\nOut: ▁  -> 7 greedy tokens
  token id t -> bin index clip(V - t - 1, 0, n_bins - 2) -> bin_centers[bin] in [-1, 1], where
  V = text vocab - pad_to_multiple_of and bin_centers are the midpoints of linspace(-1, 1, n_bins).

OpenVLA-OFT (parallel decoding, bidirectional attention over the whole sequence; moojink/openvla-oft
modeling_prismatic.py `predict_action` and the transformers fork that sets `is_causal=False`):
    <s> [patches per image] [proprio] In: ...Out: ▁ [0]*(K*A) </s>
  the placeholder embeddings are zeros; the hidden states fed to the L1 head are the K*A positions
  *starting one before* the first placeholder (the "▁" token, then the first K*A-1 placeholders) —
  OFT slices `NUM_PATCHES + NUM_PROMPT_TOKENS : + K*A`, the next-token shift of its training.

Batches: prompts of different lengths are left-padded *inside* the sequence (between the prefix
and the text), masked out and skipped by the positions, so each row computes what it would alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.hf_cache import run_with_cache
from .configuration_openvla import OpenVLAConfig
from .modeling_vit import TimmViT


def llama_config(cfg: OpenVLAConfig):
    from transformers import LlamaConfig

    c = LlamaConfig(**cfg.llama)
    c._attn_implementation = "sdpa"
    return c


class PrismaticVisionBackbone(nn.Module):
    """One or two (fused) ViTs. Input: per image, channels [0:3] for `featurizer` (DINOv2) and [3:6]
    for `fused_featurizer` (SigLIP), images stacked along channels; output: per-image patch features
    concatenated along the feature dim, images concatenated along the sequence."""

    def __init__(self, cfg: OpenVLAConfig, num_images: int = 1):
        super().__init__()
        self.featurizer = TimmViT(cfg.vision[0])
        self.fused_featurizer = TimmViT(cfg.vision[1]) if cfg.use_fused_vision_backbone else None
        self.num_images = num_images

    @property
    def embed_dim(self) -> int:
        return self.featurizer.embed_dim + (self.fused_featurizer.embed_dim if self.fused_featurizer else 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        per = 6 if self.fused_featurizer is not None else 3
        if pixel_values.shape[1] != per * self.num_images:
            raise ValueError(f"expected {per * self.num_images} channels ({self.num_images} image(s) x {per}), "
                             f"got {pixel_values.shape[1]}")
        feats = []
        for img in torch.split(pixel_values, per, dim=1):
            if self.fused_featurizer is None:
                feats.append(self.featurizer(img))
            else:
                a, b = torch.split(img, [3, 3], dim=1)
                feats.append(torch.cat([self.featurizer(a), self.fused_featurizer(b)], dim=2))
        return torch.cat(feats, dim=1)


class PrismaticProjector(nn.Module):
    """'gelu-mlp' (single ViT): fc2(GELU(fc1 x)); 'fused-gelu-mlp': fc3(GELU(fc2(GELU(fc1 x)))) with a
    4 x vision_dim first layer (2176 -> 8704 -> 4096 -> 4096 for OpenVLA-7B)."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
            self.act_fn2 = nn.GELU()
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc2(self.act_fn1(self.fc1(x)))
        return self.fc3(self.act_fn2(x)) if self.fused else x


class ProprioProjector(nn.Module):
    """OFT prismatic/models/projectors.py: fc2(GELU(fc1 state)) -> one backbone token."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(state)))


class MLPResNetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """OFT prismatic/models/action_heads.py: the K*A action hidden states are regrouped per timestep
    (B, K, A*D) and mapped by an MLPResNet (2 blocks, width D) to (B, K, A)."""

    def __init__(self, llm_dim: int, action_dim: int, chunk_size: int, num_blocks: int = 2):
        super().__init__()
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.model = MLPResNet(num_blocks, llm_dim * action_dim, llm_dim, action_dim)

    def forward(self, action_hidden: torch.Tensor) -> torch.Tensor:
        return self.model(action_hidden.reshape(action_hidden.shape[0], self.chunk_size, -1))


class OpenVLAModule(nn.Module):
    """Vision backbone + projector + Llama (with its LM head), shared by both heads."""

    def __init__(self, cfg: OpenVLAConfig, num_images: int = 1):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.cfg = cfg
        self.vision_backbone = PrismaticVisionBackbone(cfg, num_images)
        self.projector = PrismaticProjector(cfg.use_fused_vision_backbone, self.vision_backbone.embed_dim, cfg.llm_dim)
        self.language_model = LlamaForCausalLM(llama_config(cfg))
        # Static keep set of visual tokens (indices into every image's patches, images in order), set
        # by visual-token-prune; not a checkpoint tensor: passes/tokens/state.py saves it beside them.
        self.register_buffer("visual_keep", torch.zeros(0, dtype=torch.long), persistent=False)

    # --- the sequence ----------------------------------------------------------------------------
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.projector(self.vision_backbone(pixel_values))
        if self.visual_keep.numel():
            tokens = tokens.index_select(1, self.visual_keep.to(tokens.device))
        return tokens

    def sequence(self, inputs: dict, before_text: torch.Tensor | None = None, after_text: torch.Tensor | None = None):
        """Embeddings and 2-D mask of  <s> [visual] [before_text] [pad.. text] [after_text]."""
        embed = self.language_model.model.embed_tokens
        vis = self.visual_tokens(inputs["pixel_values"])
        b = vis.shape[0]
        bos = embed(inputs["bos_ids"])  # (B, 1)
        parts = [bos, vis] + ([before_text] if before_text is not None else []) + [embed(inputs["text_ids"])]
        parts += [after_text] if after_text is not None else []
        text_mask = inputs["text_mask"]
        ones = lambda n: torch.ones(b, n, dtype=text_mask.dtype, device=text_mask.device)  # noqa: E731
        n_before = 1 + vis.shape[1] + (before_text.shape[1] if before_text is not None else 0)
        masks = [ones(n_before), text_mask] + ([ones(after_text.shape[1])] if after_text is not None else [])
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    @staticmethod
    def positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    # --- OpenVLA: autoregressive action tokens ----------------------------------------------------
    @torch.no_grad()
    def generate_action_tokens(self, inputs: dict, n_tokens: int) -> torch.Tensor:
        """Greedy decoding over the full vocabulary (HF `generate`, do_sample=False) with a KV cache."""
        from transformers import DynamicCache

        model, lm_head = self.language_model.model, self.language_model.lm_head
        embeds, mask = self.sequence(inputs)
        meta = embeds.device.type == "meta"  # FLOP counting: values unknown, batch 1 without padding
        pos = self.positions(mask)
        past = DynamicCache()
        out, past = run_with_cache(model, past, inputs_embeds=embeds, attention_mask=None if meta else mask,
                                   position_ids=pos, use_cache=True)
        tokens = []
        for i in range(n_tokens):
            tok = lm_head(out.last_hidden_state[:, -1]).argmax(-1)
            tokens.append(tok)
            if i == n_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out, past = run_with_cache(model, past, inputs_embeds=model.embed_tokens(tok[:, None]),
                                       attention_mask=None if meta else mask, position_ids=pos, use_cache=True)
        return torch.stack(tokens, dim=1)

    def tokens_to_actions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """OpenVLA's de-tokenisation to normalised actions in [-1, 1] (float32, any device)."""
        n = self.cfg.n_action_bins
        edges = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
        centers = ((edges[:-1] + edges[1:]) / 2.0).to(torch.float32).to(token_ids.device)
        idx = (self.cfg.action_vocab_end - token_ids - 1).clamp(0, n - 2)
        return centers[idx]

    # --- OpenVLA-OFT: parallel decoding -----------------------------------------------------------
    def parallel_sequence(self, inputs: dict, proprio_token: torch.Tensor | None, n_queries: int, stop_id: int):
        """Embeddings and mask of  <s> [visual] [proprio] [pad.. text] [0]*n_queries </s>."""
        embed = self.language_model.model.embed_tokens
        b = inputs["text_ids"].shape[0]
        placeholders = torch.zeros(b, n_queries, self.cfg.llm_dim, dtype=embed.weight.dtype,
                                   device=inputs["text_ids"].device)
        stop = embed(torch.full((b, 1), stop_id, dtype=torch.long, device=inputs["text_ids"].device))
        return self.sequence(inputs, before_text=proprio_token, after_text=torch.cat([placeholders, stop], 1))

    def parallel_action_hidden(self, inputs: dict, proprio_token: torch.Tensor | None, n_queries: int,
                               stop_id: int) -> torch.Tensor:
        """Hidden states (B, n_queries, D) for the L1 head, bidirectional attention."""
        embeds, mask = self.parallel_sequence(inputs, proprio_token, n_queries, stop_id)
        b, n = mask.shape
        # key-padding mask, identical for every query row: full bidirectional attention among real tokens
        attn = mask.bool()[:, None, None, :].expand(b, 1, n, n)
        hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=attn,
                                           position_ids=self.positions(mask)).last_hidden_state
        first = n - 1 - n_queries  # index of the first placeholder
        return hidden[:, first - 1: first - 1 + n_queries]
