"""The π0 / π0.5 network: PaliGemma (SigLIP + Gemma backbone) + Gemma action expert + flow matching.

Components (checkpoint tensor names are mapped in `checkpoint_view`):
    vision_encoder     paligemma.model.vision_tower.vision_model   (modeling_siglip.SiglipVision)
    projector          paligemma.model.multi_modal_projector       (Linear to the backbone width)
    backbone           paligemma.model.language_model              (Gemma: embed_tokens, layers, norm)
    action_head        gemma_expert.model (layers, norm) + action_in_proj / action_out_proj and
                       π0: action_time_mlp_in / _out; π0.5: time_mlp_in / _out
    proprio_projector  state_proj (π0 only)

Gemma layer (both stacks): RMSNorm computed in float32 and scaled by (1 + w); q/k/v/o without bias,
multi-query attention (8 query heads, 1 KV head of 256), rotate-half RoPE (theta 1e4) at integer
positions, eager softmax(q k^T / sqrt(256) + mask) in float32, gelu-tanh gated MLP
down(gelu(gate x) * up x), residuals. π0.5's expert replaces every norm by an adaptive one:
dense(cond) = [scale | shift | gate], norm(x) * (1 + scale) + shift, and each residual is
x + gate * y (the final norm's gate is unused).

One policy step (LeRobot's PI0Pytorch.sample_actions, written from its math):
  prefix  = [proj(siglip(img_1))] ... [proj(siglip(img_N))] [embed(tokens) * sqrt(width)], every
            token sees every real token (padding and missing cameras are masked); positions are
            cumsum(pad) - 1. Prefilled once: every backbone layer's post-RoPE keys/values.
  suffix  π0:   [state_proj(state)] [action_time_mlp_out(silu(action_time_mlp_in([action_in_proj(x);
                sincos(t)])))]: the state token sees the prefix and itself, the action tokens the
                prefix, the state and each other (bidirectional);
          π0.5: [action_in_proj(x)], cond = silu(time_mlp_out(silu(time_mlp_in(sincos(t))))), the
                action tokens see the prefix and each other.
          sincos: [sin | cos](t * 2 pi / period), width/2 periods geometric in [4e-3, 4], float64.
          Suffix positions continue after the real prefix tokens; at every layer the expert's
          queries attend to [prefix K/V ; suffix K/V].
  denoise = Euler from t = 1 (the given noise) to t = 0, dt = -1/N: x <- x + dt * v(x, t),
            v = action_out_proj(norm(expert(suffix))[-chunk:]) in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pi0 import RMS_EPS, ROPE_THETA, GemmaSize, Pi0Arch
from .modeling_siglip import Projector, SiglipVision

MASK_VALUE = -2.3819763e38  # openpi's additive mask value (LeRobot's OPENPI_ATTENTION_MASK_VALUE)


def acc(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms, RoPE and softmax compute in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = ROPE_THETA) -> torch.Tensor:
    """Rotate-half RoPE of x (B, L, H, D) at positions (B, L), as transformers' Gemma computes it."""
    d = x.shape[-1]
    a = acc(x.dtype)
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64, device=x.device).to(a) / d))
    freqs = positions[..., None].to(a) * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, :, None], emb.sin().to(x.dtype)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eager multi-query attention: q (B, Lq, H, D), k/v (B, Lk, KV, D), mask (B, Lq, Lk) bool -> (B, Lq, H*D)."""
    b, lq, h, d = q.shape
    groups = h // k.shape[2]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
    scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) * d**-0.5
    scores = scores + torch.where(mask[:, None], 0.0, MASK_VALUE)
    probs = torch.softmax(scores, dim=-1, dtype=acc(q.dtype)).to(q.dtype)
    return torch.matmul(probs, v.transpose(1, 2)).transpose(1, 2).reshape(b, lq, -1)


class GemmaRMSNorm(nn.Module):
    """x / rms(x) in float32, times (1 + weight); returns (output, gate=None)."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        a = acc(x.dtype)
        var = x.to(a).pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(var + self.eps) * (1.0 + self.weight.to(a))).type_as(x), None


class AdaptiveRMSNorm(nn.Module):
    """π0.5's adaptive RMSNorm: `dense` maps the condition to [scale | shift | gate]."""

    def __init__(self, dim: int, cond_dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.dense = nn.Linear(cond_dim, 3 * dim)
        self.eps = eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if cond is None:
            raise ValueError("an adaptive RMSNorm needs its condition (the time embedding)")
        a = acc(x.dtype)
        var = x.to(a).pow(2).mean(-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None, :].chunk(3, dim=-1)
        return (normed * (1 + scale.to(a)) + shift.to(a)).to(x.dtype), gate.to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + y if gate is None else x + y * gate


class GemmaMLP(nn.Module):
    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter, bias=False)
        self.up_proj = nn.Linear(dim, inter, bias=False)
        self.down_proj = nn.Linear(inter, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:2], -1, self.head_dim)


class GemmaLayer(nn.Module):
    """A Gemma block whose attention is driven from outside (joint prefix/suffix attention)."""

    def __init__(self, size: GemmaSize, cond_dim: int | None = None):
        super().__init__()
        w = size.width
        norm = (lambda: AdaptiveRMSNorm(w, cond_dim)) if cond_dim else (lambda: GemmaRMSNorm(w))
        self.input_layernorm = norm()
        self.self_attn = GemmaAttention(w, size.num_heads, size.num_kv_heads, size.head_dim)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(w, size.mlp_dim)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor, cond: torch.Tensor | None = None):
        """RoPE'd queries and keys, values (B, L, heads, head_dim) and the attention residual's gate."""
        a = self.self_attn
        h, gate = self.input_layernorm(x, cond)
        q, k, v = a.split(a.q_proj(h)), a.split(a.k_proj(h)), a.split(a.v_proj(h))
        return apply_rope(q, positions), apply_rope(k, positions), v, gate

    def finish(self, x: torch.Tensor, attention: torch.Tensor, gate: torch.Tensor | None,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """Output projection + (gated) residual, post-attention norm, MLP + (gated) residual."""
        x = gated_residual(x, self.self_attn.o_proj(attention.to(self.self_attn.o_proj.weight.dtype)), gate)
        h, gate2 = self.post_attention_layernorm(x, cond)
        return gated_residual(x, self.mlp(h), gate2)


class GemmaBackbone(nn.Module):
    """PaliGemma's language model: embed_tokens, layers, norm; prefix -> per-layer (K, V)."""

    def __init__(self, size: GemmaSize, vocab_size: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, size.width)
        self.layers = nn.ModuleList(GemmaLayer(size) for _ in range(size.depth))
        self.norm = GemmaRMSNorm(size.width)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings scaled by sqrt(width): a float32 constant cast to the weight's dtype, as
        transformers' GemmaTextScaledWordEmbedding does (bf16: 45.25 for width 2048)."""
        w = self.embed_tokens.weight
        return self.embed_tokens(ids) * torch.tensor(math.sqrt(w.shape[1]), dtype=torch.float32).to(w.device, w.dtype)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> list[tuple]:
        """Post-RoPE keys/values (B, L, kv_heads, head_dim) of every layer (the last layer's output
        and the final norm feed nothing at inference, so they are not computed)."""
        kv, x = [], embeds
        for i, layer in enumerate(self.layers):
            q, k, v, gate = layer.qkv(x, positions)
            kv.append((k, v))
            if i < len(self.layers) - 1:
                x = layer.finish(x, attend(q, k, v, mask), gate)
        return kv


class GemmaExpert(nn.Module):
    """`gemma_expert.model`: the expert's layers and final norm (no embeddings)."""

    def __init__(self, size: GemmaSize, adaptive: bool):
        super().__init__()
        cond = size.width if adaptive else None
        self.layers = nn.ModuleList(GemmaLayer(size, cond) for _ in range(size.depth))
        self.norm = AdaptiveRMSNorm(size.width, size.width) if adaptive else GemmaRMSNorm(size.width)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """(B,) times -> (B, dim) [sin | cos] over dim/2 periods geometric in [min, max], in float64."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (1.0 / period * 2 * math.pi)[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class ActionExpert(nn.Module):
    """The action head: one Euler step's velocity v(x_t, t) given the prefix keys/values."""

    def __init__(self, arch: Pi0Arch):
        super().__init__()
        p, w = arch.policy, arch.expert.width
        self.adaptive = arch.adaptive
        self.expert = GemmaExpert(arch.expert, arch.adaptive)
        self.action_in_proj = nn.Linear(p.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, p.max_action_dim)
        if self.adaptive:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(w, w), nn.Linear(w, w)
        else:
            self.action_time_mlp_in, self.action_time_mlp_out = nn.Linear(2 * w, w), nn.Linear(w, w)
        self.chunk_size, self.min_period, self.max_period = p.chunk_size, p.min_period, p.max_period

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor, state_emb: torch.Tensor | None):
        """(suffix tokens (B, S, W), condition (B, W) or None, attention flags (S,))."""
        a = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        te = sinusoidal_time_embedding(t, a.shape[-1], self.min_period, self.max_period).to(t.dtype)
        if self.adaptive:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(te.to(self.time_mlp_in.weight.dtype)))))
            flags = [1] + [0] * (a.shape[1] - 1)
            return a, cond, flags
        h = torch.cat([a, te[:, None, :].to(a.dtype).expand_as(a)], dim=-1)
        h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(h)))
        if state_emb is None:
            raise ValueError("π0's expert needs the state token (state_proj(state))")
        flags = [1, 1] + [0] * (a.shape[1] - 1)
        return torch.cat([state_emb[:, None, :].to(h.dtype), h], dim=1), None, flags

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, prefix_kv: list[tuple], prefix_pad: torch.Tensor,
                state_emb: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, chunk, max_action_dim), t (B,) float32, prefix_pad (B, P) bool -> velocity (B, chunk, max_action_dim)."""
        h, cond, flags = self.embed_suffix(x_t, t, state_emb)
        layers = self.expert.layers
        h = h.to(layers[0].self_attn.q_proj.weight.dtype)
        b, s = h.shape[:2]
        cum = torch.cumsum(torch.tensor(flags, device=h.device), 0)
        among = (cum[None, :] <= cum[:, None])[None].expand(b, s, s)
        mask = torch.cat([prefix_pad[:, None, :].expand(b, s, prefix_pad.shape[1]), among], dim=2)
        positions = prefix_pad.sum(-1, keepdim=True) + torch.arange(s, device=h.device)[None, :]
        for layer, (pk, pv) in zip(layers, prefix_kv):
            q, k, v, gate = layer.qkv(h, positions, cond)
            keys, values = torch.cat([pk.to(k.dtype), k], dim=1), torch.cat([pv.to(v.dtype), v], dim=1)
            h = layer.finish(h, attend(q, keys, values, mask), gate, cond)
        out, _ = self.expert.norm(h, cond)
        w = self.action_out_proj.weight
        return self.action_out_proj(out[:, -self.chunk_size:].to(acc(out.dtype)).to(w.dtype))


class Pi0Module(nn.Module):
    """The network (see the module docstring). Inputs as produced by processor_pi0."""

    def __init__(self, arch: Pi0Arch):
        super().__init__()
        self.arch = arch
        p = arch.policy
        self.vision_encoder = SiglipVision(arch.vision, p.image_size)
        self.projector = Projector(arch.vision.hidden_size, arch.backbone.width)
        self.backbone = GemmaBackbone(arch.backbone, arch.vocab_size)
        self.action_head = ActionExpert(arch)
        self.proprio_projector = None if arch.adaptive else nn.Linear(p.max_state_dim, arch.expert.width)
        # carried for the round trip, never used by the policy (see checkpoint_view)
        self.vlm_lm_head: nn.Linear | None = None
        self.expert_lm_head: nn.Linear | None = None
        # Static keep set of visual tokens (indices into the cameras' tokens, cameras in order), set by
        # visual-token-prune and saved beside the weights (token_reduction.json), not a checkpoint tensor.
        self.register_buffer("visual_keep", torch.zeros(0, dtype=torch.long), persistent=False)

    def embed_prefix(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (B, P, width) and pad mask (B, P)."""
        pixels = inputs["pixel_values"]
        b, n = pixels.shape[:2]
        img = self.projector(self.vision_encoder(pixels.flatten(0, 1)))
        t, d = img.shape[1:]
        img = img.reshape(b, n * t, d)
        img_mask = inputs["image_masks"].bool()[:, :, None].expand(b, n, t).reshape(b, n * t)
        if self.visual_keep.numel():
            keep = self.visual_keep.to(img.device)
            img, img_mask = img.index_select(1, keep), img_mask.index_select(1, keep)
        dtype = self.backbone.layers[0].self_attn.q_proj.weight.dtype
        lang = self.backbone.embed(inputs["lang_tokens"])
        embs = torch.cat([img.to(dtype), lang.to(dtype)], dim=1)
        return embs, torch.cat([img_mask, inputs["lang_masks"].bool()], dim=1)

    def prefill(self, inputs: dict) -> tuple[list[tuple], torch.Tensor]:
        """Per-layer prefix keys/values and the prefix pad mask."""
        embs, pad = self.embed_prefix(inputs)
        positions = torch.cumsum(pad.long(), dim=1) - 1
        mask = pad[:, None, :] & pad[:, :, None]
        return self.backbone(embs, mask, positions), pad

    def state_token(self, inputs: dict) -> torch.Tensor | None:
        if self.proprio_projector is None:
            return None
        return self.proprio_projector(inputs["state"].to(self.proprio_projector.weight.dtype))

    def velocity(self, inputs: dict, prefix_kv: list[tuple], pad: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        return self.action_head(x_t, t, prefix_kv, pad, self.state_token(inputs))

    def sample_actions(self, inputs: dict, noise: torch.Tensor) -> torch.Tensor:
        """Euler integration from `noise` (t = 1) to actions (t = 0): (B, chunk, max_action_dim), in
        float32 (float64 for a float64 model); the times are float32, as LeRobot's."""
        prefix_kv, pad = self.prefill(inputs)
        state = self.state_token(inputs)
        steps = self.arch.policy.num_inference_steps
        dt = -1.0 / steps
        a = acc(self.action_head.action_out_proj.weight.dtype)
        x = noise.to(a)
        for step in range(steps):
            t = torch.full((x.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=x.device)
            x = x + dt * self.action_head(x, t, prefix_kv, pad, state).to(a)
        return x

    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        p = self.arch.policy
        return (batch, p.chunk_size, p.max_action_dim)


def _node(**children: nn.Module | None) -> nn.Module:
    m = nn.Module()
    for name, child in children.items():
        if child is not None:
            m.add_module(name, child)
    return m


class _TiedHead(nn.Module):
    """`paligemma.lm_head` when the file stores the word embeddings only under that name."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.weight = embedding.weight


def checkpoint_view(model: Pi0Module, embed_layout: str = "lm_head") -> nn.Module:
    """A module whose state-dict names are the checkpoint's (LeRobot's PI0Policy / PI05Policy),
    sharing `model`'s tensors. `embed_layout`: where the file keeps the word embeddings —
    "lm_head" (published checkpoints: safetensors keeps one name of the tied pair, lm_head),
    "embed_tokens", or "both" (a separate lm_head, carried as `vlm_lm_head`)."""
    bb, head = model.backbone, model.action_head
    if embed_layout == "lm_head":
        language_model, lm_head = _node(layers=bb.layers, norm=bb.norm), _TiedHead(bb.embed_tokens)
    else:
        language_model, lm_head = _node(embed_tokens=bb.embed_tokens, layers=bb.layers, norm=bb.norm), model.vlm_lm_head
    paligemma = _node(model=_node(vision_tower=_node(vision_model=model.vision_encoder),
                                  multi_modal_projector=model.projector, language_model=language_model),
                      lm_head=lm_head)
    names = ("time_mlp_in", "time_mlp_out") if head.adaptive else ("action_time_mlp_in", "action_time_mlp_out")
    mlps = {n: getattr(head, n) for n in names}
    return _node(model=_node(paligemma_with_expert=_node(paligemma=paligemma,
                                                         gemma_expert=_node(model=head.expert,
                                                                            lm_head=model.expert_lm_head)),
                             state_proj=model.proprio_projector, action_in_proj=head.action_in_proj,
                             action_out_proj=head.action_out_proj, **mlps))
