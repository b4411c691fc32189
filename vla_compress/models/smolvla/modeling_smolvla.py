"""The SmolVLA network: SmolVLM backbone + action expert + flow matching, as four components.

Components (the module tree; checkpoint tensor names are mapped in `checkpoint_view`):
    vision_encoder     vlm.model.vision_model                     (modeling_vision.SmolVLMVision)
    projector          vlm.model.connector                        (pixel shuffle + Linear)
    backbone           vlm.model.text_model, first num_vlm_layers (Llama layers, embed_tokens, norm)
    action_head        lm_expert + action_in_proj / action_out_proj / action_time_mlp_in / _out
    proprio_projector  state_proj
    vlm_lm_head        vlm.lm_head: carried for the round trip, never used by the policy

One policy step (LeRobot's VLAFlowMatching.sample_actions, written from its math):
  prefix  = [img_1 * sqrt(D)] ... [img_N * sqrt(D)] [embed(lang) * sqrt(D)] [state_proj(state)]
            attention flags 0 for image/language, 1 for the state token; token i sees token j when
            cumsum(flags)_j <= cumsum(flags)_i and both are real (not padding): images and language
            attend bidirectionally among themselves, the state token sees everything; positions are
            cumsum(pad mask) - 1.
  prefill = every VLM layer on the prefix; its post-RoPE keys/values are kept (the outputs of the
            last VLM layer and the final norm feed nothing, so they are not computed).
  denoise = Euler from t = 1 (noise) to t = 0 with dt = -1/num_steps:
            x <- x + dt * v(x, t), v = action_out_proj(norm(expert(suffix))), where
            suffix = action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x); sincos(t)])))
            with sincos over `width / 2` periods geometric in [min_period, max_period]
            (float64, [sin | cos]); the suffix is causal among itself and sees every real prefix token.
            Self-attention layers: the expert's RoPE'd q/k/v (positions n_prefix + 0..K-1) attend to
            [prefix K/V ; suffix K/V]. Cross-attention layers: the expert's k_proj / v_proj map the
            cached VLM keys / values; queries take positions 0..K-1.
RoPE everywhere is the rotate-half form with wavelength 10000 (SmolVLA's own, not the VLM's
rope_theta); attention is the eager form: GQA by repeating KV heads, scores in float32 scaled
by head_dim^-0.5, masked entries replaced by the float32 minimum (a fully masked padding row
averages uniformly instead of producing NaN), softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_smolvla import SmolVLAArch
from .modeling_vision import Connector, SmolVLMVision

ROPE_WAVELENGTH = 10_000


def apply_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (B, L, H, D) at positions (B, L), computed in float32."""
    half = x.shape[-1] // 2
    dtype = x.dtype
    x = x.float()
    exponents = (2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32, device=x.device)
    radians = positions[..., None].float() / (ROPE_WAVELENGTH**exponents)[None, None, :]
    sin, cos = torch.sin(radians)[..., None, :], torch.cos(radians)[..., None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eager GQA attention: q (B, Lq, H, D), k/v (B, Lk, KV, D), mask (B, Lq, Lk) bool -> (B, Lq, H*D)."""
    b, lq, h, d = q.shape
    groups = h // k.shape[2]
    k = k.repeat_interleave(groups, dim=2) if groups > 1 else k
    v = v.repeat_interleave(groups, dim=2) if groups > 1 else v
    scores = torch.matmul(q.float().transpose(1, 2), k.float().permute(0, 2, 3, 1)) * d**-0.5
    scores = torch.where(mask[:, None], scores, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v.transpose(1, 2)).transpose(1, 2).reshape(b, lq, h * d)


class RMSNorm(nn.Module):
    """Llama RMSNorm: normalise in float32, scale by `weight` in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter, bias=bias)
        self.up_proj = nn.Linear(dim, inter, bias=bias)
        self.down_proj = nn.Linear(inter, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttentionProjections(nn.Module):
    """q/k/v/o projections; k/v read `kv_in` features (the expert's cross-attention layers read the
    VLM's cached keys/values, num_kv_heads * head_dim wide)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, kv_in: int, bias: bool = False):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(kv_in, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=bias)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:2], -1, self.head_dim)


class DecoderLayer(nn.Module):
    """A Llama block whose attention is driven from outside (prefix prefill, self- or cross-step)."""

    def __init__(self, dim: int, inter: int, heads: int, kv_heads: int, head_dim: int, eps: float,
                 kv_in: int | None = None, attention_bias: bool = False, mlp_bias: bool = False):
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = LlamaAttentionProjections(dim, heads, kv_heads, head_dim, kv_in or dim, attention_bias)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = LlamaMLP(dim, inter, mlp_bias)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE'd queries and keys, and values, of this layer's own tokens."""
        a = self.self_attn
        h = self.input_layernorm(x)
        q, k, v = a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))
        return apply_rope(q, positions), apply_rope(k, positions), v

    def finish(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Residual, post-attention norm, MLP, residual."""
        x = x + self.self_attn.o_proj(attention)
        return x + self.mlp(self.post_attention_layernorm(x))

    def self_step(self, x: torch.Tensor, positions: torch.Tensor, prefix_kv: tuple, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x, positions)
        keys, values = torch.cat([prefix_kv[0], k], dim=1), torch.cat([prefix_kv[1], v], dim=1)
        return self.finish(x, attend(q, keys, values, mask))

    def cross_step(self, x: torch.Tensor, positions: torch.Tensor, prefix_kv: tuple, mask: torch.Tensor) -> torch.Tensor:
        a = self.self_attn
        q = apply_rope(a.split(a.q_proj(self.input_layernorm(x))), positions)
        pk, pv = prefix_kv
        keys = a.split(a.k_proj(pk.reshape(*pk.shape[:2], -1).to(a.k_proj.weight.dtype)))
        values = a.split(a.v_proj(pv.reshape(*pv.shape[:2], -1).to(a.v_proj.weight.dtype)))
        return self.finish(x, attend(q, keys, values, mask))


def _layer(arch: SmolVLAArch, dim: int, inter: int, kv_in: int | None = None) -> DecoderLayer:
    t = arch.vlm.text
    return DecoderLayer(dim, inter, t.num_heads, t.num_kv_heads, t.head_dim, t.rms_norm_eps, kv_in,
                        t.attention_bias, t.mlp_bias)


class TextModel(nn.Module):
    """The VLM's Llama text model (first num_vlm_layers layers): prefix -> per-layer (K, V)."""

    def __init__(self, arch: SmolVLAArch):
        super().__init__()
        t = arch.vlm.text
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList(_layer(arch, t.hidden_size, t.intermediate_size) for _ in range(arch.vlm_layers))
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> list[tuple]:
        """Keys/values (B, L, kv_heads, head_dim) of every layer, post-RoPE."""
        kv = []
        x = embeds
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, positions)
            kv.append((k, v))
            if i < len(self.layers) - 1:
                x = layer.finish(x, attend(q, k, v, mask))
        return kv


class ExpertModel(nn.Module):
    """`lm_expert`: the expert's Llama layers and final norm (no embeddings)."""

    def __init__(self, arch: SmolVLAArch):
        super().__init__()
        w, inter = arch.expert_hidden, arch.expert_intermediate
        self.layers = nn.ModuleList(_layer(arch, w, inter, arch.kv_dim if arch.expert_is_cross(j) else None)
                                    for j in range(arch.expert_layers))
        self.norm = RMSNorm(w, arch.vlm.text.rms_norm_eps)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """(B,) times -> (B, dim) [sin | cos] over dim/2 periods geometric in [min, max], in float64."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    scale = 1.0 / period * 2 * math.pi  # LeRobot's operation order, so float64 rounding matches
    angle = t.to(torch.float64)[:, None] * scale[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class ActionExpert(nn.Module):
    """The action head: one Euler step's velocity v(x_t, t) given the prefix keys/values."""

    def __init__(self, arch: SmolVLAArch):
        super().__init__()
        p, w = arch.policy, arch.expert_hidden
        self.lm_expert = ExpertModel(arch)
        self.action_in_proj = nn.Linear(p.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, p.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * w, w)
        self.action_time_mlp_out = nn.Linear(w, w)
        self.plan = arch.plan
        self.min_period, self.max_period = p.min_period, p.max_period

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.action_in_proj(x_t)
        te = sinusoidal_time_embedding(t, a.shape[-1], self.min_period, self.max_period).to(a.dtype)
        h = torch.cat([a, te[:, None, :].expand_as(a)], dim=-1)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: list[tuple], prefix_pad: torch.Tensor) -> torch.Tensor:
        """x_t (B, K, max_action_dim), t (B,) float32, prefix_pad (B, P) bool -> velocity (B, K, max_action_dim)."""
        h = self.embed_suffix(x_t, t)
        b, k = h.shape[:2]
        to_prefix = prefix_pad[:, None, :].expand(b, k, prefix_pad.shape[1])
        causal = torch.ones(k, k, dtype=torch.bool, device=h.device).tril()[None].expand(b, k, k)
        self_mask = torch.cat([to_prefix, causal], dim=2)
        steps = torch.arange(k, device=h.device)[None, :]
        self_pos = prefix_pad.sum(-1, keepdim=True) + steps  # after the real prefix tokens
        cross_pos = self_pos - self_pos.min(dim=1, keepdim=True).values  # 0 .. K-1
        layers = self.lm_expert.layers
        for i, plan in enumerate(self.plan):
            if plan.expert is None:
                continue  # no expert layer at this VLM depth: the action tokens pass through
            if plan.kind == "self":
                h = layers[plan.expert].self_step(h, self_pos, prefix_kv[i], self_mask)
            else:
                h = layers[plan.expert].cross_step(h, cross_pos, prefix_kv[i], to_prefix)
        return self.action_out_proj(self.lm_expert.norm(h).float().to(self.action_out_proj.weight.dtype))


class SmolVLAModule(nn.Module):
    """The network (see the module docstring). Inputs as produced by processor_smolvla."""

    def __init__(self, arch: SmolVLAArch):
        super().__init__()
        self.arch = arch
        v, t, p = arch.vlm.vision, arch.vlm.text, arch.policy
        self.vision_encoder = SmolVLMVision(v, p.image_size())
        self.projector = Connector(v.hidden_size, t.hidden_size, arch.vlm.scale_factor)
        self.backbone = TextModel(arch)
        self.action_head = ActionExpert(arch)
        self.proprio_projector = nn.Linear(p.max_state_dim, t.hidden_size)
        self.vlm_lm_head = None if t.tie_word_embeddings else nn.Linear(t.hidden_size, t.vocab_size, bias=False)
        self.image_token_ids: tuple[int, int] | None = None  # <fake_token_around_image>, <global-img> ids
        # Static keep set of visual tokens (indices into the cameras' tokens, cameras in order), set by
        # visual-token-prune; not a checkpoint tensor: passes/tokens/state.py saves it beside them.
        self.register_buffer("visual_keep", torch.zeros(0, dtype=torch.long), persistent=False)

    # --- the prefix --------------------------------------------------------------------------------
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, S, S) -> (B, N, T, D) visual tokens, scaled by sqrt(D)."""
        b, n = pixel_values.shape[:2]
        feats = self.projector(self.vision_encoder(pixel_values.flatten(0, 1)))
        feats = feats * torch.tensor(feats.shape[-1] ** 0.5, dtype=feats.dtype, device=feats.device)
        return feats.reshape(b, n, *feats.shape[1:])

    def embed_prefix(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, P, D), pad mask (B, P) and attention flags (B, P)."""
        embed = self.backbone.embed_tokens
        img = self.embed_images(inputs["pixel_values"])
        b, n, t, d = img.shape
        img_mask = inputs["image_masks"].bool()[:, :, None].expand(b, n, t)
        if self.arch.policy.add_image_special_tokens:  # [fake][global] image [fake], per image, unscaled
            fake, glob = self.image_token_ids  # type: ignore[misc]
            ids = torch.tensor([fake, glob, fake], device=img.device)
            special = embed(ids).to(img.dtype)[None, None].expand(b, n, 3, d)
            img = torch.cat([special[:, :, :2], img, special[:, :, 2:]], dim=2)
            ones = torch.ones(b, n, 1, dtype=torch.bool, device=img.device)
            img_mask = torch.cat([ones, ones, img_mask, ones], dim=2)
        img, img_mask = img.reshape(b, -1, d), img_mask.reshape(b, -1)
        dropped = 0
        if self.visual_keep.numel():  # the kept visual tokens, image special tokens always kept
            keep = self.visual_keep.to(img.device)
            if self.arch.policy.add_image_special_tokens:  # camera i: [fake][global] t tokens [fake]
                per, dev = t + 3, img.device
                special = (torch.arange(n, device=dev)[:, None] * per + torch.tensor([0, 1, per - 1], device=dev))
                keep = torch.cat([keep // t * per + 2 + keep % t, special.flatten()]).sort().values
            dropped = img.shape[1] - keep.numel()
            img, img_mask = img.index_select(1, keep), img_mask.index_select(1, keep)
        lang = embed(inputs["lang_tokens"])
        lang = lang * math.sqrt(lang.shape[-1])
        state = self.proprio_projector(inputs["state"].to(self.proprio_projector.weight.dtype))[:, None, :]
        embs = torch.cat([img, lang.to(img.dtype), state.to(img.dtype)], dim=1)
        pad = torch.cat([img_mask, inputs["lang_masks"].bool(),
                         torch.ones(b, 1, dtype=torch.bool, device=img.device)], dim=1)
        flags = torch.zeros_like(pad)
        flags[:, -1] = True
        target = self.arch.policy.prefix_length - dropped
        if target > 0:  # LeRobot's prefix_length: zero-pad a shorter prefix to a fixed length
            # sym_max, not `if P < target`: traced with a dynamic number of cameras / text length,
            # a comparison would guard on those sizes; max(target - P, 0) stays symbolic
            extra = torch.sym_max(target - pad.shape[1], 0)
            embs = F.pad(embs, (0, 0, 0, extra))
            pad, flags = F.pad(pad, (0, extra)), F.pad(flags, (0, extra))
        return embs, pad, flags

    @staticmethod
    def prefix_mask(pad: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        cum = torch.cumsum(flags.long(), dim=1)
        return (cum[:, None, :] <= cum[:, :, None]) & pad[:, None, :] & pad[:, :, None]

    def prefill(self, inputs: dict) -> tuple[list[tuple], torch.Tensor]:
        """Per-layer prefix keys/values and the prefix pad mask."""
        embs, pad, flags = self.embed_prefix(inputs)
        positions = torch.cumsum(pad.long(), dim=1) - 1
        return self.backbone(embs, self.prefix_mask(pad, flags), positions), pad

    # --- flow matching -----------------------------------------------------------------------------
    def sample_actions(self, inputs: dict, noise: torch.Tensor) -> torch.Tensor:
        """Euler integration from `noise` (t = 1) to actions (t = 0): (B, chunk, max_action_dim)."""
        prefix_kv, pad = self.prefill(inputs)
        steps = self.arch.policy.num_steps
        dt = -1.0 / steps
        x = noise.to(self.action_head.action_in_proj.weight.dtype)
        for step in range(steps):
            t = torch.full((x.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=x.device)
            x = x + dt * self.action_head(x, t, prefix_kv, pad)
        return x

    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        p = self.arch.policy
        return (batch, p.chunk_size, p.max_action_dim)


def checkpoint_view(model: SmolVLAModule) -> nn.Module:
    """A module whose state dict names are the checkpoint's (LeRobot's SmolVLAPolicy), sharing the
    tensors of `model`'s current components (so it reflects any component a pass replaced)."""
    def node(**children: nn.Module | None) -> nn.Module:
        m = nn.Module()
        for name, child in children.items():
            if child is not None:
                m.add_module(name, child)
        return m

    head = model.action_head
    vlm = node(model=node(vision_model=model.vision_encoder, connector=model.projector, text_model=model.backbone),
               lm_head=model.vlm_lm_head)
    return node(model=node(vlm_with_expert=node(vlm=vlm, lm_expert=head.lm_expert),
                           state_proj=model.proprio_projector, action_in_proj=head.action_in_proj,
                           action_out_proj=head.action_out_proj, action_time_mlp_in=head.action_time_mlp_in,
                           action_time_mlp_out=head.action_time_mlp_out))
