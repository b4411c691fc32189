"""Numerical equivalence of π0 / π0.5 with an independent float64 re-computation from the documented
math, reading the tensors straight from the checkpoint file by LeRobot's names (no adapter modules):

  vision (SigLIP):  conv patches + position table, pre-norm blocks (LayerNorm eps 1e-6,
                    softmax(q k^T / sqrt(d)) v, gelu-tanh MLP), post LayerNorm; projector Linear
  prefix:           [proj(siglip(img))]... [embed(tokens) * sqrt(width)], full attention among real
                    tokens, positions cumsum(pad) - 1
  Gemma layer:      RMSNorm * (1 + w) (eps 1e-6), rotate-half RoPE (theta 1e4), multi-query
                    attention, gelu-tanh gated MLP; π0.5's expert: [scale|shift|gate] = dense(cond),
                    norm * (1 + scale) + shift, residual x + gate * y
  suffix:           π0  [state_proj(state)] [mlp([action_in_proj(x); sincos(t)])], flags 1 1 0..0;
                    π0.5 [action_in_proj(x)], cond = silu(mlp(sincos(t))), flags 1 0..0; positions
                    after the real prefix; queries see [prefix K/V ; suffix K/V]
  flow:             x <- x + dt v(x, t), t = 1, 1 - 1/N, ... (float32 times), dt = -1/N
One Gemma layer and the vision tower are also checked against transformers' own modules, and the
whole π0 step against transformers' GemmaModel run as LeRobot's PaliGemmaWithExpertModel runs it
(prefix into a KV cache, the expert reading it at every Euler step; the images through our SigLIP,
checked separately).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vla_compress.models.pi0 import Pi0

from .conftest import make_obs

torch.set_num_threads(1)
PG = "model.paligemma_with_expert.paligemma."
VM = PG + "model.vision_tower.vision_model."
LM = PG + "model.language_model."
EX = "model.paligemma_with_expert.gemma_expert.model."


def read(path) -> tuple[dict, dict]:
    sd = {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}
    sd.setdefault(LM + "embed_tokens.weight", sd.get(PG + "lm_head.weight"))
    return sd, json.loads((path / "config.json").read_text())


def lin(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias and f"{name}.bias" in sd else y


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)


def rope(x, pos):
    d = x.shape[-1]
    inv = 1.0 / (10_000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos[..., None].double() * inv
    cos, sin = torch.cos(ang)[:, :, None], torch.sin(ang)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def attn(q, k, v, mask):
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = torch.where(mask[:, None], s, -1e300)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v).flatten(2)


def heads(t, hd):
    return t.reshape(*t.shape[:2], -1, hd)


def norm(x, sd, name, cond):
    """(normed, gate): plain Gemma RMSNorm, or π0.5's adaptive one when the file has `.dense`."""
    if f"{name}.dense.weight" not in sd:
        return rms(x, sd[f"{name}.weight"]), None
    scale, shift, gate = lin(cond, sd, f"{name}.dense")[:, None].chunk(3, -1)
    return rms(x, 0.0) * (1 + scale) + shift, gate


def res(x, y, gate):
    return x + y if gate is None else x + y * gate


def layer_qkv(x, sd, name, pos, hd, cond=None):
    h, gate = norm(x, sd, f"{name}.input_layernorm", cond)
    q, k, v = (heads(lin(h, sd, f"{name}.self_attn.{p}_proj", False), hd) for p in "qkv")
    return rope(q, pos), rope(k, pos), v, gate


def layer_out(x, sd, name, a, gate, cond=None):
    x = res(x, lin(a, sd, f"{name}.self_attn.o_proj", False), gate)
    h, gate2 = norm(x, sd, f"{name}.post_attention_layernorm", cond)
    m = lin(F.gelu(lin(h, sd, f"{name}.mlp.gate_proj", False), approximate="tanh") * lin(h, sd, f"{name}.mlp.up_proj", False),
            sd, f"{name}.mlp.down_proj", False)
    return res(x, m, gate2)


def ref_vision(sd, img, heads_n):
    p = sd[VM + "embeddings.patch_embedding.weight"].shape[-1]
    x = F.conv2d(img, sd[VM + "embeddings.patch_embedding.weight"], sd[VM + "embeddings.patch_embedding.bias"],
                 stride=p).flatten(2).transpose(1, 2) + sd[VM + "embeddings.position_embedding.weight"]
    hd = x.shape[-1] // heads_n
    i = 0
    while f"{VM}encoder.layers.{i}.layer_norm1.weight" in sd:
        b = f"{VM}encoder.layers.{i}"
        h = F.layer_norm(x, x.shape[-1:], sd[f"{b}.layer_norm1.weight"], sd[f"{b}.layer_norm1.bias"], 1e-6)
        q, k, v = (heads(lin(h, sd, f"{b}.self_attn.{n}_proj"), hd) for n in "qkv")
        full = torch.ones(x.shape[0], x.shape[1], x.shape[1], dtype=torch.bool)
        x = x + lin(attn(q, k, v, full), sd, f"{b}.self_attn.out_proj")
        h = F.layer_norm(x, x.shape[-1:], sd[f"{b}.layer_norm2.weight"], sd[f"{b}.layer_norm2.bias"], 1e-6)
        x = x + lin(F.gelu(lin(h, sd, f"{b}.mlp.fc1"), approximate="tanh"), sd, f"{b}.mlp.fc2")
        i += 1
    x = F.layer_norm(x, x.shape[-1:], sd[VM + "post_layernorm.weight"], sd[VM + "post_layernorm.bias"], 1e-6)
    return lin(x, sd, PG + "model.multi_modal_projector.linear")


def sincos(t, dim):
    frac = torch.linspace(0, 1, dim // 2, dtype=torch.float64)
    period = 4e-3 * (4.0 / 4e-3) ** frac
    ang = t.double()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], 1).float().double()  # LeRobot keeps it in float32


def ref_policy(path, x, noise):
    sd, policy = read(path)
    arch = policy["vla_compress"]["architecture"]
    hd, n_layers = arch["paligemma"]["head_dim"], arch["paligemma"]["depth"]
    b, n = x["pixel_values"].shape[:2]
    img = ref_vision(sd, x["pixel_values"].double().flatten(0, 1), arch["vision"]["num_heads"])
    t_img = img.shape[1]
    img = img.reshape(b, n * t_img, -1)
    width = img.shape[-1]
    lang = sd[LM + "embed_tokens.weight"][x["lang_tokens"]] * math.sqrt(width)
    h = torch.cat([img, lang], 1)
    pad = torch.cat([x["image_masks"][:, :, None].expand(b, n, t_img).reshape(b, -1), x["lang_masks"]], 1)
    pos = pad.long().cumsum(1) - 1
    mask = pad[:, None] & pad[:, :, None]
    kv = []
    for i in range(n_layers):
        q, k, v, g = layer_qkv(h, sd, f"{LM}layers.{i}", pos, hd)
        kv.append((k, v))
        h = layer_out(h, sd, f"{LM}layers.{i}", attn(q, k, v, mask), g)
    pi05 = policy["type"] == "pi05"
    steps, chunk = policy["num_inference_steps"], policy["chunk_size"]
    xt, dt = noise.double(), -1.0 / steps
    for step in range(steps):
        t = torch.full((b,), 1.0 + step * dt, dtype=torch.float32)
        a = lin(xt, sd, "model.action_in_proj")
        te = sincos(t, a.shape[-1])
        if pi05:
            cond = F.silu(lin(F.silu(lin(te, sd, "model.time_mlp_in")), sd, "model.time_mlp_out"))
            s, flags = a, [1] + [0] * (chunk - 1)
        else:
            cond = None
            at = lin(F.silu(lin(torch.cat([a, te[:, None].expand_as(a)], -1), sd, "model.action_time_mlp_in")), sd,
                     "model.action_time_mlp_out")
            s, flags = torch.cat([lin(x["state"].double(), sd, "model.state_proj")[:, None], at], 1), [1, 1] + [0] * (chunk - 1)
        cum = torch.tensor(flags).cumsum(0)
        smask = torch.cat([pad[:, None].expand(b, len(flags), pad.shape[1]),
                           (cum[None] <= cum[:, None])[None].expand(b, -1, -1)], 2)
        spos = pad.sum(1, keepdim=True) + torch.arange(len(flags))[None]
        for i in range(n_layers):
            q, k, v, g = layer_qkv(s, sd, f"{EX}layers.{i}", spos, hd, cond)
            s = layer_out(s, sd, f"{EX}layers.{i}",
                          attn(q, torch.cat([kv[i][0], k], 1), torch.cat([kv[i][1], v], 1), smask), g, cond)
        out, _ = norm(s, sd, f"{EX}norm", cond)
        xt = xt + dt * lin(out[:, -chunk:], sd, "model.action_out_proj")
    return xt


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_policy_step_matches_float64_reference(pi0_dirs, kind):
    path = pi0_dirs[kind, "float32"]
    model = Pi0.from_pretrained(path, dtype=torch.float64)
    # a missing camera (a masked -1 image), two prompt lengths
    obs = [make_obs(4, cameras=("wrist",)), make_obs(5, cameras=("wrist",), instruction="reach")]
    x = model.preprocess(obs)
    noise = torch.randn(model.noise_shape(2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.predict_chunk({**x, "noise": noise})
    want = ref_policy(path, x, noise)[:, :, :4]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    full = model.preprocess([make_obs(6)])
    with torch.no_grad():
        got = model.predict_chunk({**full, "noise": noise[:1]})
    torch.testing.assert_close(got, ref_policy(path, full, noise[:1])[:, :, :4], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["pi0", "pi05"])
def test_float32_model_is_close_to_the_reference(pi0_dirs, kind):
    path = pi0_dirs[kind, "mixed"]
    model = Pi0.from_pretrained(path)
    x = model.preprocess([make_obs(8)])
    noise = torch.randn(model.noise_shape(1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.predict_chunk({**x, "noise": noise})
    torch.testing.assert_close(got.double(), ref_policy(path, x, noise)[:, :, :4], rtol=1e-4, atol=1e-4)


def test_euler_loop_matches_a_hand_integration(pi0_dirs):
    """The loop alone: N float32 times 1, 1 - 1/N, ..., x <- x + dt v, from the given noise."""
    model = Pi0.from_pretrained(pi0_dirs["pi0", "float32"], dtype=torch.float64)
    x = model._model_inputs(model.preprocess([make_obs(9)]))
    noise = torch.randn(model.noise_shape(1), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        kv, pad = model.prefill(x)
        state = model.state_token(x)
        xt, times = noise.clone(), []
        for k in range(4):
            t = torch.tensor([1.0 - k / 4], dtype=torch.float32)
            times.append(float(t))
            xt = xt - 0.25 * model.action_head(xt, t, kv, pad, state)
        got = model.sample_actions(x, noise)
    assert times == [1.0, 0.75, 0.5, 0.25]
    torch.testing.assert_close(got, xt, rtol=0, atol=1e-12)


def test_one_gemma_layer_and_siglip_match_transformers(pi0_dirs):
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer, GemmaRotaryEmbedding
    from transformers.models.siglip.modeling_siglip import SiglipVisionModel

    path = pi0_dirs["pi0", "float32"]
    model = Pi0.from_pretrained(path, dtype=torch.float64)
    arch = json.loads((path / "config.json").read_text())["vla_compress"]["architecture"]
    g, v = arch["paligemma"], arch["vision"]
    cfg = transformers.GemmaConfig(hidden_size=g["width"], intermediate_size=g["mlp_dim"], num_attention_heads=g["num_heads"],
                                   num_key_value_heads=g["num_kv_heads"], head_dim=g["head_dim"], num_hidden_layers=1,
                                   vocab_size=arch["vocab_size"], hidden_activation="gelu_pytorch_tanh")
    cfg._attn_implementation = "eager"
    hf = GemmaDecoderLayer(cfg, 0).double().eval()
    hf.load_state_dict(model.backbone.layers[0].state_dict())
    rot = GemmaRotaryEmbedding(cfg)
    x = torch.randn(2, 7, g["width"], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(7)[None].expand(2, 7)
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1, 5:] = False
    mask = pad[:, None] & pad[:, :, None]
    additive = torch.zeros(mask[:, None].shape, dtype=torch.float64).masked_fill(~mask[:, None], -1e30)
    with torch.no_grad():
        want = hf(x, attention_mask=additive, position_ids=pos, position_embeddings=rot(x, pos))
        want = want[0] if isinstance(want, tuple) else want
        layer = model.backbone.layers[0]
        from vla_compress.models.pi0.modeling_pi0 import attend

        q, k, vv, gate = layer.qkv(x, pos)
        got = layer.finish(x, attend(q, k, vv, mask), gate)
    # transformers' Gemma computes its norms and RoPE tables in float32 even in a float64 model
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, :5], want[1, :5], rtol=1e-5, atol=1e-5)

    vcfg = transformers.SiglipVisionConfig(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                                           num_hidden_layers=v["num_layers"], num_attention_heads=v["num_heads"],
                                           patch_size=v["patch_size"], image_size=16, vision_use_head=False)
    vcfg._attn_implementation = "eager"
    siglip = SiglipVisionModel(vcfg).double().eval()
    target = getattr(siglip, "vision_model", siglip)  # transformers 5 flattened SiglipVisionModel
    missing, unexpected = target.load_state_dict(model.vision_encoder.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    img = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        # (transformers' eager attention takes its softmax in float32)
        torch.testing.assert_close(model.vision_encoder(img), siglip(pixel_values=img).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


def test_pi0_matches_transformers_gemma_run_as_lerobot_runs_it(pi0_dirs):
    """LeRobot's inference path built from transformers' GemmaModel: the backbone prefilled once into a
    DynamicCache with openpi's additive 4D mask, then every Euler step the expert GemmaModel reading
    a copy of that cache (its keys/values appended after the prefix's), float32."""
    import copy
    import inspect

    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma.modeling_gemma import GemmaModel

    path = pi0_dirs["pi0", "float32"]
    sd, policy = read(path)
    sd = {k: v.float() for k, v in sd.items()}
    arch = policy["vla_compress"]["architecture"]

    def gemma(g, prefix):
        cfg = transformers.GemmaConfig(hidden_size=g["width"], intermediate_size=g["mlp_dim"], num_hidden_layers=g["depth"],
                                       num_attention_heads=g["num_heads"], num_key_value_heads=g["num_kv_heads"],
                                       head_dim=g["head_dim"], vocab_size=arch["vocab_size"],
                                       hidden_activation="gelu_pytorch_tanh")
        cfg._attn_implementation = "eager"
        m = GemmaModel(cfg).eval()
        own = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        missing, unexpected = m.load_state_dict(own, strict=False)
        assert not unexpected and set(missing) <= {"embed_tokens.weight"}
        return m

    lm = gemma(arch["paligemma"], LM)
    expert = gemma(arch["action_expert"], EX)
    cache_kw = "cache" if "cache" in inspect.signature(GemmaModel.forward).parameters else "past_key_values"
    model = Pi0.from_pretrained(path)
    x = model.preprocess([make_obs(1), make_obs(2, instruction="reach")])
    noise = torch.randn(model.noise_shape(2), generator=torch.Generator().manual_seed(0))
    b, n = x["pixel_values"].shape[:2]

    def additive(mask):
        return torch.where(mask[:, None], 0.0, -2.3819763e38)

    with torch.no_grad():
        want = model.predict_chunk({**x, "noise": noise})
        img = model.projector(model.vision_encoder(x["pixel_values"].flatten(0, 1))).reshape(b, -1, arch["paligemma"]["width"])
        per = img.shape[1] // n
        embs = torch.cat([img, F.embedding(x["lang_tokens"], sd[LM + "embed_tokens.weight"]) * torch.tensor(
            math.sqrt(arch["paligemma"]["width"]))], 1)
        pad = torch.cat([x["image_masks"][:, :, None].expand(b, n, per).reshape(b, -1), x["lang_masks"]], 1)
        out = lm(inputs_embeds=embs, attention_mask=additive(pad[:, None] & pad[:, :, None]),
                 position_ids=pad.long().cumsum(1) - 1, use_cache=True)
        cache = out.past_key_values
        flags = torch.tensor([1, 1] + [0] * 4).cumsum(0)
        seen = torch.cat([pad[:, None].expand(b, 6, pad.shape[1]), (flags[None] <= flags[:, None])[None].expand(b, 6, 6)], 2)
        xt = noise.clone()
        for k in range(4):
            t = torch.tensor(1.0 - k / 4, dtype=torch.float32).expand(b)
            a = lin(xt, sd, "model.action_in_proj")
            h = lin(F.silu(lin(torch.cat([a, sincos(t, a.shape[-1]).float()[:, None].expand_as(a)], -1), sd,
                               "model.action_time_mlp_in")), sd, "model.action_time_mlp_out")
            s = torch.cat([lin(x["state"], sd, "model.state_proj")[:, None], h], 1)
            o = expert(inputs_embeds=s, attention_mask=additive(seen), position_ids=pad.sum(1, keepdim=True) + torch.arange(6),
                       use_cache=False, **{cache_kw: copy.deepcopy(cache)}).last_hidden_state
            xt = xt - 0.25 * lin(o[:, -5:], sd, "model.action_out_proj")
    torch.testing.assert_close(xt[:, :, :4], want, rtol=1e-6, atol=1e-6)
