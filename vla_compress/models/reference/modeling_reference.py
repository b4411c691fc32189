"""The reference VLA: real transformers blocks (SigLIP ViT, Llama) wired the Prismatic way.

Sequence the backbone sees in one policy step (OpenVLA's order, plus an OFT proprio token):

    <s> [visual tokens] In: What action should the robot take to {instruction}?\nOut: [proprio] [action]

`[action]` is K learned query embeddings decoded in parallel (regression head) or the
autoregressively generated action tokens (tokens head). Padding inside a batch sits between
the visual and the text tokens and is masked out; positions are the running count of real
tokens, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.hf_cache import run_with_cache
from .configuration_reference import ReferenceConfig


def siglip_config(cfg: ReferenceConfig):
    from transformers import SiglipVisionConfig

    v = cfg.vision
    c = SiglipVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
        # heads of the recorded width (pruned layers get their own head count in apply_layer_sizes)
        num_attention_heads=v.hidden_size // v.attention_head_dim, num_channels=3, image_size=v.image_size,
        patch_size=v.patch_size, vision_use_head=False,
    )
    c._attn_implementation = "sdpa"
    return c


def llama_config(cfg: ReferenceConfig):
    from transformers import LlamaConfig

    b = cfg.backbone
    c = LlamaConfig(
        vocab_size=b.vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
        num_hidden_layers=b.num_layers, num_attention_heads=b.num_heads, num_key_value_heads=b.num_kv_heads,
        max_position_embeddings=b.max_position, rope_theta=b.rope_theta, rms_norm_eps=b.rms_norm_eps,
        head_dim=b.attention_head_dim, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    c._attn_implementation = "sdpa"
    return c


def apply_layer_sizes(vision: nn.Module, backbone: nn.Module, cfg: ReferenceConfig) -> None:
    """Give each layer the head count and MLP width the config records for it.

    Structured pruning (vla_compress.passes.prune) leaves heads of the original width and layers
    of different sizes; HF builds every layer alike, so layers whose size differs get projections
    of the right shape here (the weights are loaded afterwards). A no-op for unpruned configs.
    """
    v, b = cfg.vision, cfg.backbone
    hd = v.attention_head_dim
    for i, layer in enumerate(vision.encoder.layers):
        attn, mlp, heads, inter = layer.self_attn, layer.mlp, v.layer_heads(i), v.layer_intermediate(i)
        if attn.q_proj.out_features != heads * hd:
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(attn, name, nn.Linear(v.hidden_size, heads * hd))
            attn.out_proj = nn.Linear(heads * hd, v.hidden_size)
        attn.num_heads = heads
        if mlp.fc1.out_features != inter:
            mlp.fc1, mlp.fc2 = nn.Linear(v.hidden_size, inter), nn.Linear(inter, v.hidden_size)
    hd = b.attention_head_dim
    for i, layer in enumerate(backbone.layers):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv, inter = b.layer_heads(i), b.layer_kv_heads(i), b.layer_intermediate(i)
        if attn.q_proj.out_features != heads * hd or attn.k_proj.out_features != kv * hd:
            attn.q_proj = nn.Linear(b.hidden_size, heads * hd, bias=False)
            attn.k_proj = nn.Linear(b.hidden_size, kv * hd, bias=False)
            attn.v_proj = nn.Linear(b.hidden_size, kv * hd, bias=False)
            attn.o_proj = nn.Linear(heads * hd, b.hidden_size, bias=False)
        attn.num_key_value_groups = heads // kv  # repeat_kv factor used by the attention kernels
        if mlp.gate_proj.out_features != inter:
            mlp.gate_proj = nn.Linear(b.hidden_size, inter, bias=False)
            mlp.up_proj = nn.Linear(b.hidden_size, inter, bias=False)
            mlp.down_proj = nn.Linear(inter, b.hidden_size, bias=False)


class Projector(nn.Module):
    """Prismatic's "gelu-mlp" projector, with an optional pixel-unshuffle token merge first."""

    def __init__(self, vision_dim: int, llm_dim: int, grid: int, merge: int = 1):
        super().__init__()
        self.grid, self.merge = grid, merge
        self.fc1 = nn.Linear(vision_dim * merge * merge, llm_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.merge > 1:
            b, n, d = patches.shape
            g, m = self.grid, self.merge
            x = patches.reshape(b, g // m, m, g // m, m, d).permute(0, 1, 3, 2, 4, 5)
            patches = x.reshape(b, (g // m) ** 2, m * m * d)
        return self.fc2(self.act(self.fc1(patches)))


class ProprioProjector(nn.Module):
    """OpenVLA-OFT's proprio projector: a 2-layer MLP from robot state to one backbone token."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(state)))


class L1RegressionHead(nn.Module):
    """OFT-style head: learned action queries decoded in one pass, then an MLP per query."""

    def __init__(self, llm_dim: int, action_dim: int, chunk_size: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(chunk_size, llm_dim) * 0.02)
        self.norm = nn.LayerNorm(llm_dim)
        self.fc1 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, action_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(hidden))))


class ReferenceVLAModule(nn.Module):
    """The network alone (no tokenizer/normalisation): what passes transform and exporters trace."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        from transformers import LlamaModel, SiglipVisionModel

        self.cfg = cfg
        self.vision_encoder = SiglipVisionModel(siglip_config(cfg))
        grid = cfg.vision.image_size // cfg.vision.patch_size
        self.projector = Projector(cfg.vision.hidden_size, cfg.backbone.hidden_size, grid, cfg.token_merge)
        self.backbone = LlamaModel(llama_config(cfg))
        apply_layer_sizes(self.vision_encoder, self.backbone, cfg)
        self.proprio_projector = ProprioProjector(cfg.proprio_dim, cfg.backbone.hidden_size)
        if cfg.head == "regression":
            self.action_head: nn.Module = L1RegressionHead(cfg.backbone.hidden_size, cfg.action_dim, cfg.chunk_size)
        else:
            self.action_head = nn.Linear(cfg.backbone.hidden_size, cfg.backbone.vocab_size, bias=False)
        # Indices of visual tokens kept after attention-guided pruning (set by the token pass).
        self.register_buffer("visual_keep", torch.zeros(0, dtype=torch.long), persistent=True)

    # --- the prefix --------------------------------------------------------------------------
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3 * cameras, S, S) -> (B, visual tokens, D): each camera through the shared ViT and
        projector, tokens concatenated camera by camera (then the pruning keep set, if any)."""
        n = self.cfg.vision.num_cameras
        b = pixel_values.shape[0]
        if n > 1:
            s = self.cfg.vision.image_size
            pixel_values = pixel_values.reshape(b * n, 3, s, s)
        patches = self.vision_encoder(pixel_values=pixel_values).last_hidden_state
        tokens = self.projector(patches)
        if n > 1:
            tokens = tokens.reshape(b, n * tokens.shape[1], tokens.shape[2])
        if self.visual_keep.numel():
            tokens = tokens.index_select(1, self.visual_keep)
        return tokens

    def prefix(self, pixel_values, text_ids, text_mask, state):
        """Embeddings, mask and positions of <s> [visual] [text] [proprio]."""
        b = pixel_values.shape[0]
        embed = self.backbone.embed_tokens
        vis = self.visual_tokens(pixel_values)
        bos = embed(torch.full((b, 1), 1, dtype=torch.long, device=vis.device))
        txt = embed(text_ids)
        prop = self.proprio_projector(state).unsqueeze(1)
        embeds = torch.cat([bos, vis, txt, prop], dim=1)
        ones = lambda n: torch.ones(b, n, dtype=text_mask.dtype, device=vis.device)  # noqa: E731
        mask = torch.cat([ones(1 + vis.shape[1]), text_mask, ones(1)], dim=1)
        return embeds, mask

    @staticmethod
    def positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)

    def run_backbone(self, embeds, mask, past=None, position_ids=None, use_cache=False):
        if position_ids is None:
            position_ids = self.positions(mask)
        # On the meta device (FLOP counting of 7B-sized configs) the mask's values are unknown;
        # those counts are for batch 1 without padding, where "no mask" is the same computation.
        attn_mask = None if embeds.device.type == "meta" else mask
        if embeds.device.type == "meta" and past is None:
            # without a mask and a cache, transformers probes position_ids for packed sequences with a
            # data-dependent branch (.item() on meta); an empty cache skips the probe, same computation
            from transformers import DynamicCache

            past = DynamicCache(config=self.backbone.config)
        out, present = run_with_cache(self.backbone, past, inputs_embeds=embeds, attention_mask=attn_mask,
                                      position_ids=position_ids, use_cache=use_cache)
        return out.last_hidden_state, present

    # --- heads -------------------------------------------------------------------------------
    def forward_regression(self, pixel_values, text_ids, text_mask, state):
        """Normalised action chunk (B, K, A) in one forward pass."""
        embeds, mask = self.prefix(pixel_values, text_ids, text_mask, state)
        b, k = embeds.shape[0], self.cfg.chunk_size
        q = self.action_head.queries.unsqueeze(0).expand(b, -1, -1)
        embeds = torch.cat([embeds, q], dim=1)
        mask = torch.cat([mask, torch.ones(b, k, dtype=mask.dtype, device=mask.device)], dim=1)
        hidden, _ = self.run_backbone(embeds, mask)
        return self.action_head(hidden[:, -k:])

    def forward_tokens_teacher(self, pixel_values, text_ids, text_mask, state, action_ids):
        """Logits over the vocabulary at every action position (teacher forcing, for training)."""
        embeds, mask = self.prefix(pixel_values, text_ids, text_mask, state)
        n = action_ids.shape[1]
        act = self.backbone.embed_tokens(action_ids[:, :-1])
        embeds = torch.cat([embeds, act], dim=1)
        mask = torch.cat([mask, torch.ones(mask.shape[0], n - 1, dtype=mask.dtype, device=mask.device)], dim=1)
        hidden, _ = self.run_backbone(embeds, mask)
        return self.action_head(hidden[:, -n:])

    def action_logits(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """Logits restricted to the 256 action-token ids (the last ids of the vocabulary)."""
        w = self.action_head.weight[-self.cfg.n_bins :]
        return hidden_last @ w.t()

    @torch.no_grad()
    def generate_action_tokens(self, pixel_values, text_ids, text_mask, state) -> torch.Tensor:
        """Greedy decoding of chunk*dim action tokens with a KV cache; returns bin indices (B, N)."""
        from transformers import DynamicCache

        embeds, mask = self.prefix(pixel_values, text_ids, text_mask, state)
        n = self.cfg.action_tokens
        past = DynamicCache()
        hidden, past = self.run_backbone(embeds, mask, past=past, use_cache=True)
        pos = self.positions(mask)[:, -1:]
        bins = []
        start = self.cfg.backbone.vocab_size - self.cfg.n_bins
        for i in range(n):
            b = self.action_logits(hidden[:, -1]).argmax(-1)
            bins.append(b)
            if i == n - 1:
                break
            tok = self.backbone.embed_tokens((b + start).unsqueeze(1))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            hidden, past = self.run_backbone(tok, mask, past=past, position_ids=pos, use_cache=True)
        return torch.stack(bins, dim=1)

    def bins_to_actions(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin index -> bin centre in [-1, 1]; (B, K*A) -> (B, K, A)."""
        centers = -1.0 + (bins.float() + 0.5) * (2.0 / self.cfg.n_bins)
        return centers.reshape(bins.shape[0], self.cfg.chunk_size, self.cfg.action_dim)

    def actions_to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised actions (B, K, A) -> bin indices (B, K*A)."""
        b = ((actions.clamp(-1, 1) + 1.0) * (self.cfg.n_bins / 2.0)).floor().long().clamp(0, self.cfg.n_bins - 1)
        return b.reshape(actions.shape[0], -1)

    def forward(self, pixel_values, text_ids, text_mask, state):
        """Normalised action chunk (B, K, A) for either head."""
        if self.cfg.head == "regression":
            return self.forward_regression(pixel_values, text_ids, text_mask, state)
        return self.bins_to_actions(self.generate_action_tokens(pixel_values, text_ids, text_mask, state))
