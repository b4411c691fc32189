"""Numerical equivalence of SmolVLA with an independent float64 re-computation from the documented
math, reading the tensors straight from the checkpoint file by LeRobot's names (no adapter modules):

  vision (SigLIP/SmolVLM):  conv patches + position table, pre-norm blocks (LayerNorm eps 1e-6,
                            softmax(q k^T / sqrt(d)) v, gelu-tanh MLP), post LayerNorm
  connector:                transformers' pixel_shuffle (view / permute / reshape sequence), Linear
  prefix:                   [img * sqrt(D)] [embed(lang) * sqrt(D)] [state_proj(state)], flags 0..0 1,
                            token i sees j iff cumsum_j <= cumsum_i and both real; pos = cumsum(pad) - 1
  Llama layers:             RMSNorm, rotate-half RoPE (wavelength 1e4), GQA, SiLU-gated MLP
  expert:                   VLM layer i % n == 0: self-attention over [prefix K/V ; suffix K/V] at
                            positions n_prefix + k; else cross-attention, k/v = expert k/v projections
                            of the cached VLM K/V, query positions k; suffix causal
  flow:                     x <- x + dt v(x, t), t = 1, 1 - 1/S, ..., dt = -1/S; time embedding
                            [sin | cos](t * 2 pi / period), periods geometric in [4e-3, 4]
The vision encoder and connector are also checked against transformers' SmolVLM modules.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vla_compress.models.smolvla import SmolVLA
from vla_compress.models.smolvla.fixtures import write_tiny_smolvla

from .conftest import make_obs

torch.set_num_threads(1)
V = "model.vlm_with_expert.vlm.model."
E = "model.vlm_with_expert.lm_expert."


# ------------------------------------------------------------------------------------- reference math
def read(path) -> tuple[dict, dict, dict]:
    sd = {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}
    policy = json.loads((path / "config.json").read_text())
    vlm = json.loads((path.with_name(path.name + "-vlm") / "config.json").read_text())
    return sd, policy, vlm


def lin(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias else y


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos):
    d = x.shape[-1]
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos[..., None].double() * inv  # (B, L, D/2)
    cos, sin = torch.cos(ang)[:, :, None], torch.sin(ang)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def attn(q, k, v, mask):
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = torch.where(mask[:, None], s, torch.finfo(torch.float64).min)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v).flatten(2)


def heads(t, hd):
    return t.reshape(*t.shape[:2], -1, hd)


def mlp(x, sd, name):
    return lin(F.silu(lin(x, sd, f"{name}.gate_proj", False)) * lin(x, sd, f"{name}.up_proj", False), sd,
               f"{name}.down_proj", False)


def ref_vision(sd, img, v):
    p = v["patch_size"]
    x = F.conv2d(img, sd[V + "vision_model.embeddings.patch_embedding.weight"],
                 sd[V + "vision_model.embeddings.patch_embedding.bias"], stride=p).flatten(2).transpose(1, 2)
    x = x + sd[V + "vision_model.embeddings.position_embedding.weight"][: x.shape[1]]  # native size: identity
    hd = v["hidden_size"] // v["num_attention_heads"]
    for i in range(v["num_hidden_layers"]):
        b = V + f"vision_model.encoder.layers.{i}"
        h = F.layer_norm(x, x.shape[-1:], sd[f"{b}.layer_norm1.weight"], sd[f"{b}.layer_norm1.bias"], 1e-6)
        q, k, vv = (heads(lin(h, sd, f"{b}.self_attn.{n}"), hd) for n in ("q_proj", "k_proj", "v_proj"))
        full = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool)
        x = x + lin(attn(q, k, vv, full), sd, f"{b}.self_attn.out_proj")
        h = F.layer_norm(x, x.shape[-1:], sd[f"{b}.layer_norm2.weight"], sd[f"{b}.layer_norm2.bias"], 1e-6)
        x = x + lin(F.gelu(lin(h, sd, f"{b}.mlp.fc1"), approximate="tanh"), sd, f"{b}.mlp.fc2")
    return F.layer_norm(x, x.shape[-1:], sd[V + "vision_model.post_layernorm.weight"],
                        sd[V + "vision_model.post_layernorm.bias"], 1e-6)


def ref_connector(sd, x, s):
    n, seq, d = x.shape
    side = int(seq**0.5)
    x = x.view(n, side, side, d).view(n, side, side // s, d * s).permute(0, 2, 1, 3)
    x = x.reshape(n, side // s, side // s, d * s * s).permute(0, 2, 1, 3).reshape(n, seq // (s * s), d * s * s)
    return x @ sd[V + "connector.modality_projection.proj.weight"].T


def ref_layer(x, sd, name, q, k, v, mask, eps):
    x = x + lin(attn(q, k, v, mask), sd, f"{name}.self_attn.o_proj", False)
    return x + mlp(rms(x, sd[f"{name}.post_attention_layernorm.weight"], eps), sd, f"{name}.mlp")


def ref_qkv(x, sd, name, hd, eps):
    h = rms(x, sd[f"{name}.input_layernorm.weight"], eps)
    return [heads(lin(h, sd, f"{name}.self_attn.{p}", False), hd) for p in ("q_proj", "k_proj", "v_proj")]


def ref_expert_self(h, sd, name, pos, pk, pv, mask, hd, eps):
    q, k, v = ref_qkv(h, sd, name, hd, eps)
    return ref_layer(h, sd, name, rope(q, pos), torch.cat([pk, rope(k, pos)], 1), torch.cat([pv, v], 1), mask, eps)


def ref_expert_cross(h, sd, name, pos, pk, pv, mask, hd, eps):
    q = heads(lin(rms(h, sd[f"{name}.input_layernorm.weight"], eps), sd, f"{name}.self_attn.q_proj", False), hd)
    k = heads(lin(pk.flatten(2), sd, f"{name}.self_attn.k_proj", False), hd)
    v = heads(lin(pv.flatten(2), sd, f"{name}.self_attn.v_proj", False), hd)
    return ref_layer(h, sd, name, rope(q, pos), k, v, mask, eps)


def ref_policy_step(sd, policy, vlm, x: dict, noise, special_ids=None):
    """The whole policy step in float64 (see the module docstring)."""
    v, t, s = vlm["vision_config"], vlm["text_config"], vlm["scale_factor"]
    hd, eps, d = t["head_dim"], t["rms_norm_eps"], t["hidden_size"]
    pix = x["pixel_values"].double()
    b, n = pix.shape[:2]
    img = ref_connector(sd, ref_vision(sd, pix.flatten(0, 1), v), s) * math.sqrt(d)
    tok = img.shape[1]
    img, img_pad = img.reshape(b, n, tok, d), x["image_masks"][:, :, None].expand(b, n, tok)
    emb = sd[V + "text_model.embed_tokens.weight"]
    if policy["add_image_special_tokens"]:
        fake, glob = emb[special_ids[0]], emb[special_ids[1]]
        pre, post = torch.stack([fake, glob])[None, None].expand(b, n, 2, d), fake[None, None, None].expand(b, n, 1, d)
        img = torch.cat([pre, img, post], 2)
        img_pad = torch.cat([torch.ones(b, n, 2, dtype=torch.bool), img_pad, torch.ones(b, n, 1, dtype=torch.bool)], 2)
    lang = emb[x["lang_tokens"]] * math.sqrt(d)
    state = lin(x["state"].double(), sd, "model.state_proj")[:, None]
    prefix = torch.cat([img.reshape(b, -1, d), lang, state], 1)
    pad = torch.cat([img_pad.reshape(b, -1), x["lang_masks"], torch.ones(b, 1, dtype=torch.bool)], 1)
    flags = torch.zeros_like(pad, dtype=torch.long)
    flags[:, -1] = 1
    if pad.shape[1] < policy["prefix_length"]:
        extra = policy["prefix_length"] - pad.shape[1]
        prefix = torch.cat([prefix, torch.zeros(b, extra, d, dtype=prefix.dtype)], 1)
        pad = torch.cat([pad, torch.zeros(b, extra, dtype=torch.bool)], 1)
        flags = torch.cat([flags, torch.zeros(b, extra, dtype=torch.long)], 1)
    cum = flags.cumsum(1)
    mask = (cum[:, None, :] <= cum[:, :, None]) & pad[:, None, :] & pad[:, :, None]
    pos = pad.long().cumsum(1) - 1
    n_vlm = min(policy["num_vlm_layers"], t["num_hidden_layers"])
    kv, h = [], prefix
    for i in range(n_vlm):
        name = V + f"text_model.layers.{i}"
        q, k, vv = ref_qkv(h, sd, name, hd, eps)
        kv.append((rope(k, pos), vv))
        h = ref_layer(h, sd, name, rope(q, pos), kv[-1][0], vv, mask, eps)
    n_exp = policy["num_expert_layers"] if policy["num_expert_layers"] > 0 else n_vlm
    every, nsa, cross = n_vlm // n_exp, policy["self_attn_every_n_layers"], "cross" in policy["attention_mode"]
    steps, chunk = policy["num_steps"], noise.shape[1]
    dt = -1.0 / steps
    xt = noise.double()
    w = int(d * policy["expert_width_multiplier"])
    frac = torch.linspace(0, 1, w // 2, dtype=torch.float64)
    period = policy["min_period"] * (policy["max_period"] / policy["min_period"]) ** frac
    to_prefix = pad[:, None, :].expand(b, chunk, pad.shape[1])
    self_mask = torch.cat([to_prefix, torch.ones(chunk, chunk, dtype=torch.bool).tril()[None].expand(b, -1, -1)], 2)
    self_pos = pad.sum(1, keepdim=True) + torch.arange(chunk)
    cross_pos = torch.arange(chunk)[None].expand(b, chunk)
    for step in range(steps):
        tt = float(torch.tensor(1.0 + step * dt, dtype=torch.float32))
        ang = tt * 2 * math.pi / period
        te = torch.cat([torch.sin(ang), torch.cos(ang)])[None, None].expand(b, chunk, w)
        a = lin(xt, sd, "model.action_in_proj")
        h = lin(F.silu(lin(torch.cat([a, te], -1), sd, "model.action_time_mlp_in")), sd, "model.action_time_mlp_out")
        for i in range(n_vlm):
            if every > 0 and i > 0 and i % every:
                continue  # no expert layer at this depth
            name = E + f"layers.{i // every}"
            if not cross or (nsa > 0 and i % nsa == 0):
                h = ref_expert_self(h, sd, name, self_pos, *kv[i], self_mask, hd, eps)
            else:
                h = ref_expert_cross(h, sd, name, cross_pos, *kv[i], to_prefix, hd, eps)
        vt = lin(rms(h, sd[E + "norm.weight"], eps), sd, "model.action_out_proj")
        xt = xt + dt * vt
    return xt[:, :, : policy["output_features"]["action"]["shape"][0]]


# ----------------------------------------------------------------------------------------- tests
def _compare(path, model, observations):
    sd, policy, vlm = read(path)
    x = model.preprocess(observations)
    noise = torch.randn(model.noise_shape(len(observations)), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.predict_chunk({**x, "noise": noise}).double()
    ref = ref_policy_step(sd, policy, vlm, x, noise, model.image_token_ids)
    assert got.shape == ref.shape == (len(observations), policy["chunk_size"], 4)
    assert ref.abs().max() > 0.1  # a real signal, not zeros
    err = (got - ref).abs().max().item()
    assert err < 1e-4, err


def test_policy_step_matches_reference_math(smolvla_dir, smolvla_model):
    """Default layout (lerobot/smolvla_base's): cross-attention, expert on every layer, max_length text."""
    _compare(smolvla_dir, smolvla_model, [make_obs(1)])


@pytest.mark.parametrize("layout", [
    # half as many expert layers as VLM layers (VLM layers 1 and 3 leave the action tokens unchanged),
    # self-attention every 4th layer, image special tokens, a fixed prefix_length with zero padding
    dict(num_expert_layers=2, self_attn_every_n_layers=4, add_image_special_tokens=True, prefix_length=48),
    dict(attention_mode="self_attn"),  # every layer attends to [prefix ; suffix]
])
def test_variant_layouts_match_reference_math(tmp_path, layout):
    """A batch of two tasks of different lengths ("longest" padding: masks and positions differ per row)."""
    path = write_tiny_smolvla(tmp_path / "variant", seed=5, pad_language_to="longest", **layout)
    model = SmolVLA.from_pretrained(path)
    obs = [make_obs(2, instruction="push the button"), make_obs(3, instruction="put the red cube in the box now")]
    x = model.preprocess(obs)
    assert not x["lang_masks"][0].all() and x["lang_masks"][1].all()  # the short task is padded
    _compare(path, model, obs)


def test_one_expert_layer_self_and_cross(smolvla_dir, smolvla_model):
    sd, _, vlm = read(smolvla_dir)
    t = vlm["text_config"]
    hd, eps = t["head_dim"], t["rms_norm_eps"]
    g = torch.Generator().manual_seed(0)
    b, k, p, w = 2, 5, 7, smolvla_model.arch.expert_hidden
    h = torch.randn(b, k, w, generator=g)
    pk, pv = torch.randn(b, p, t["num_key_value_heads"], hd, generator=g), torch.randn(b, p, t["num_key_value_heads"], hd, generator=g)
    pad = torch.ones(b, p, dtype=torch.bool)
    pad[1, -2:] = False
    to_prefix = pad[:, None, :].expand(b, k, p)
    self_mask = torch.cat([to_prefix, torch.ones(k, k, dtype=torch.bool).tril()[None].expand(b, -1, -1)], 2)
    self_pos = pad.sum(1, keepdim=True) + torch.arange(k)
    cross_pos = torch.arange(k)[None].expand(b, k)
    layers = smolvla_model.action_head.lm_expert.layers
    with torch.no_grad():
        got_self = layers[0].self_step(h, self_pos, (pk, pv), self_mask).double()
        got_cross = layers[1].cross_step(h, cross_pos, (pk, pv), to_prefix).double()
    ref_self = ref_expert_self(h.double(), sd, E + "layers.0", self_pos, pk.double(), pv.double(), self_mask, hd, eps)
    ref_cross = ref_expert_cross(h.double(), sd, E + "layers.1", cross_pos, pk.double(), pv.double(), to_prefix, hd, eps)
    assert (got_self - ref_self).abs().max() < 1e-5
    assert (got_cross - ref_cross).abs().max() < 1e-5


def test_vision_and_connector_match_transformers(smolvla_dir, smolvla_model):
    """The same weights in transformers' own SmolVLM vision transformer and connector."""
    from transformers import SmolVLMConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

    sd, _, vlm = read(smolvla_dir)
    cfg = SmolVLMConfig.from_dict(vlm)
    vit, conn = SmolVLMVisionTransformer(cfg.vision_config).double().eval(), SmolVLMConnector(cfg).double().eval()
    vit.load_state_dict({k[len(V + "vision_model."):]: t for k, t in sd.items() if k.startswith(V + "vision_model.")})
    conn.load_state_dict({k[len(V + "connector."):]: t for k, t in sd.items() if k.startswith(V + "connector.")})
    pix = smolvla_model.preprocess([make_obs(4)])["pixel_values"].flatten(0, 1)
    with torch.no_grad():
        ref = vit(pixel_values=pix.double()).last_hidden_state
        got = smolvla_model.vision_encoder(pix).double()
        assert (got - ref).abs().max() < 1e-4
        assert (smolvla_model.projector(got.float()).double() - conn(ref)).abs().max() < 1e-4


@pytest.mark.parametrize("side, per_side", [(32, 4), (24, 4), (48, 6)])
def test_position_ids_follow_smolvlm_bucketing(side, per_side):
    """Smaller or larger grids than the position table read it as transformers' SmolVLM does."""
    from transformers import SmolVLMConfig
    from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionEmbeddings

    from vla_compress.models.smolvla.modeling_vision import bucketed_position_ids

    cfg = SmolVLMConfig(vision_config={"hidden_size": 8, "patch_size": 8, "image_size": per_side * 8}).vision_config
    emb = SmolVLMVisionEmbeddings(cfg)
    with torch.no_grad():
        emb.position_embedding.weight.copy_(torch.arange(per_side**2, dtype=torch.float32)[:, None].expand(-1, 8))
        emb.patch_embedding.weight.zero_()
        emb.patch_embedding.bias.zero_()
        grid = side // 8
        out = emb(torch.zeros(1, 3, side, side), torch.ones(1, grid, grid, dtype=torch.bool))
    assert torch.equal(out[0, :, 0].long(), bucketed_position_ids(grid, grid, per_side))
