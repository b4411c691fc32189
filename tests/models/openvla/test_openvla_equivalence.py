"""Numerical equivalence with an independent float64 re-computation of OpenVLA / OpenVLA-OFT from
the documented math, reading the tensors straight from the checkpoint files (no adapter modules):

  ViT block (timm):   x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)); features = output of
                      the second-to-last block, prefix tokens dropped (DINOv2: cls + 4 registers)
  fused projector:    fc3(gelu(fc2(gelu(fc1(x)))))
  Llama (4.40 math):  RMSNorm(eps 1e-6), rotary (theta 1e4, rotate-half), SiLU-gated MLP
  OpenVLA:            greedy over the full vocab, bin = clip(V - id - 1, 0, 254), bin centres of
                      linspace(-1, 1, 256), x = 0.5 (a + 1)(q99 - q01) + q01 where mask
  OFT:                bidirectional pass over <s> [img1][img2][proprio] prompt ▁ [0]*KA </s>; head on
                      hidden[NUM_PATCHES + NUM_PROMPT_TOKENS :+ KA]; MLPResNet; +1e-8 in the range
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer

from vla_compress.models.openvla import OpenVLA, OpenVLAOFT

from .conftest import make_obs

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- reference math
def read_state(path) -> dict:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    state = {}
    for shard in set(index["weight_map"].values()):
        state.update(load_file(str(path / shard)))
    return {k: v.double() for k, v in state.items()}


def ref_vit(sd, prefix, img, heads, dinov2):
    w = lambda n: sd[f"{prefix}.{n}"]  # noqa: E731
    x = F.conv2d(img, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=14)
    x = x.flatten(2).transpose(1, 2)
    if dinov2:  # pos_embed on patches only, then [cls][4 registers][patches]
        x = torch.cat([w("cls_token"), w("reg_token"), x + w("pos_embed")], dim=1)
    else:
        x = x + w("pos_embed")
    depth = len({k.split(".")[3] for k in sd if k.startswith(f"{prefix}.blocks.")})
    for i in range(depth - 1):  # blocks 0 .. depth-2 inclusive: the second-to-last block's output
        b = lambda n: w(f"blocks.{i}.{n}")  # noqa: E731
        h = F.layer_norm(x, x.shape[-1:], b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        n_tok, d = h.shape[1], h.shape[2]
        qkv = (h @ b("attn.qkv.weight").T + b("attn.qkv.bias")).reshape(1, n_tok, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
        a = a.transpose(1, 2).reshape(1, n_tok, d) @ b("attn.proj.weight").T + b("attn.proj.bias")
        x = x + (a * b("ls1.scale_factor") if dinov2 else a)
        h = F.layer_norm(x, x.shape[-1:], b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        m = F.gelu(h @ b("mlp.fc1.weight").T + b("mlp.fc1.bias")) @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
        x = x + (m * b("ls2.scale_factor") if dinov2 else m)
    return x[:, 5:] if dinov2 else x


def ref_visual_tokens(sd, pixel_values):
    """pixel_values (1, 6, S, S): DINOv2 on channels 0-2, SigLIP on 3-5, concat features, projector."""
    feats = torch.cat([ref_vit(sd, "vision_backbone.featurizer", pixel_values[:, :3], 2, True),
                       ref_vit(sd, "vision_backbone.fused_featurizer", pixel_values[:, 3:], 2, False)], dim=2)
    p = lambda n: sd[f"projector.{n}"]  # noqa: E731
    x = F.gelu(feats @ p("fc1.weight").T + p("fc1.bias"))
    x = F.gelu(x @ p("fc2.weight").T + p("fc2.bias"))
    return x @ p("fc3.weight").T + p("fc3.bias")


def ref_llama(sd, x, heads, causal=True, eps=1e-6, theta=10000.0):
    """Final hidden states of HF Llama (transformers 4.40 math) for embeddings x (1, L, D)."""
    length, d = x.shape[1], x.shape[2]
    hd = d // heads
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(length, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    rot = lambda t: torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], dim=-1)  # noqa: E731
    rms = lambda t, w: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w  # noqa: E731
    mask = torch.ones(length, length, dtype=torch.bool).tril() if causal else torch.ones(length, length, dtype=torch.bool)
    n_layers = len({k.split(".")[3] for k in sd if k.startswith("language_model.model.layers.")})
    for i in range(n_layers):
        w = lambda n: sd[f"language_model.model.layers.{i}.{n}"]  # noqa: E731
        h = rms(x, w("input_layernorm.weight"))
        q, k, v = [(h @ w(f"self_attn.{p}_proj.weight").T).reshape(1, length, heads, hd).transpose(1, 2)
                   for p in ("q", "k", "v")]
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        s = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~mask, float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(1, length, d)
        x = x + a @ w("self_attn.o_proj.weight").T
        h = rms(x, w("post_attention_layernorm.weight"))
        x = x + (F.silu(h @ w("mlp.gate_proj.weight").T) * (h @ w("mlp.up_proj.weight").T)) @ w("mlp.down_proj.weight").T
    return rms(x, sd["language_model.model.norm.weight"])


def ref_pixels(frame, path):
    """PrismaticImageProcessor, resize-naive: PIL bicubic resize, /255, per-branch mean/std."""
    pre = json.loads((path / "preprocessor_config.json").read_text())
    out = []
    for size, p in zip(pre["input_sizes"], pre["tvf_normalize_params"]):
        img = np.asarray(Image.fromarray(frame).resize((size[2], size[1]), Image.BICUBIC), dtype=np.float64) / 255
        out.append((img - np.array(p["mean"])) / np.array(p["std"]))
    return torch.from_numpy(np.concatenate(out, axis=-1)).permute(2, 0, 1)[None].float().double()


def ref_input_ids(path, instruction):
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))  # its post-processor prepends <s>
    ids = tok.encode(f"In: What action should the robot take to {instruction.lower()}?\nOut:").ids
    return ids + [tok.token_to_id("\u2581")]  # OpenVLA's extra empty token (29871 in Llama-2)


def text_config(path):
    return json.loads((path / "config.json").read_text())["text_config"]


# ------------------------------------------------------------------------------------------ tests
def test_vision_and_projector_match_reference(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    sd = read_state(openvla_dir)
    px = torch.randn(1, 6, 42, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = vla.visual_tokens(px).double()
        dino = vla.vision_backbone.featurizer(px[:, :3]).double()
    assert dino.shape == (1, 9, 32)  # 3x3 patches, cls + registers dropped
    torch.testing.assert_close(dino, ref_vit(sd, "vision_backbone.featurizer", px[:, :3].double(), 2, True),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours, ref_visual_tokens(sd, px.double()), rtol=1e-4, atol=1e-4)


def test_image_preprocessing_matches_processor(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    frame = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)  # non-square: resized
    ours = vla.preprocess([{"images": {"cam": frame}, "instruction": "x"}])["pixel_values"].double()
    torch.testing.assert_close(ours, ref_pixels(frame, openvla_dir), rtol=0, atol=1e-5)


def test_prompt_ids_match_tokenizer_file(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    inputs = vla.preprocess([make_obs(0, instruction="Open the Drawer")])
    ours = inputs["bos_ids"][0].tolist() + inputs["text_ids"][0].tolist()
    assert ours == ref_input_ids(openvla_dir, "Open the Drawer")


def test_openvla_actions_match_reference(openvla_dir):
    key = "fractal20220817_data"
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key=key)
    sd = read_state(openvla_dir)
    cfg = json.loads((openvla_dir / "config.json").read_text())
    obs = make_obs(5, instruction="pick up the black bowl")
    # reference: embeddings after <s>, greedy decoding by full recomputation (no cache)
    ids = ref_input_ids(openvla_dir, obs["instruction"])
    embed = sd["language_model.model.embed_tokens.weight"]
    seq = torch.cat([embed[ids[:1]][None], ref_visual_tokens(sd, ref_pixels(obs["images"]["primary"], openvla_dir)),
                     embed[ids[1:]][None]], dim=1)
    tokens = []
    for _ in range(7):
        h = ref_llama(sd, seq, text_config(openvla_dir)["num_attention_heads"])
        tok = int((h[0, -1] @ sd["language_model.lm_head.weight"].T).argmax())
        tokens.append(tok)
        seq = torch.cat([seq, embed[[tok]][None]], dim=1)
    vocab = cfg["text_config"]["vocab_size"] - cfg["pad_to_multiple_of"]
    bins = np.linspace(-1, 1, cfg["n_action_bins"])
    centers = (bins[:-1] + bins[1:]) / 2
    norm = centers[np.clip(vocab - np.array(tokens) - 1, 0, len(centers) - 1)]
    st = cfg["norm_stats"][key]["action"]
    lo, hi = np.array(st["q01"]), np.array(st["q99"])
    expected = np.where(st["mask"], 0.5 * (norm + 1) * (hi - lo) + lo, norm)

    inputs = vla.preprocess([obs])
    assert vla.generate_action_tokens(inputs, 7)[0].tolist() == tokens
    got = vla.act(obs)
    assert got.shape == (1, 7)
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6)
    assert not np.array_equal(norm, np.full(7, norm[0]))  # the fixture decodes distinct bins


def test_token_to_bin_mapping_edges(openvla_dir):
    vla = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig")
    v = vla.cfg.action_vocab_end  # 512 for the fixture (576 - 64), 32000 for OpenVLA-7B
    ids = torch.tensor([v - 1, v - 2, v - 255, v - 256, 5, v + 3])
    got = vla.tokens_to_actions(ids).double().numpy()
    bins = np.linspace(-1, 1, 256)
    c = (bins[:-1] + bins[1:]) / 2
    # last id -> first centre; the two lowest action ids share the last centre; out-of-range ids clip
    np.testing.assert_allclose(got, [c[0], c[1], c[254], c[254], c[254], c[0]], atol=1e-7)


def test_realistic_token_range():
    assert OpenVLA.realistic().cfg.action_vocab_end == 32000  # actions are ids 31744..31999


def _ref_oft(path, obs, n_images, chunk, action_dim, with_proprio):
    sd = read_state(path)
    stats = json.loads((path / "dataset_statistics.json").read_text())
    (entry,) = stats.values()
    ids = ref_input_ids(path, obs["instruction"])
    embed = sd["language_model.model.embed_tokens.weight"]
    frames = list(obs["images"].values())
    patches = torch.cat([ref_visual_tokens(sd, ref_pixels(f, path)) for f in frames[:n_images]], dim=1)
    num_patches = patches.shape[1]
    if with_proprio:
        p = entry["proprio"]
        lo, hi = np.array(p["q01"]), np.array(p["q99"])
        mask = np.array(p.get("mask", [True] * len(lo)))
        s = np.clip(np.where(mask, 2 * (obs["state"] - lo) / (hi - lo + 1e-8) - 1, obs["state"]), -1, 1)
        s = torch.from_numpy(s)[None]
        w = lambda n: sd_p[n].double()  # noqa: E731
        sd_p = {k.removeprefix("module."): v for k, v in
                torch.load(next(path.glob("proprio_projector--*.pt")), weights_only=True).items()}
        tok = F.gelu(s @ w("fc1.weight").T + w("fc1.bias")) @ w("fc2.weight").T + w("fc2.bias")
        patches = torch.cat([patches, tok[None]], dim=1)
        num_patches += 1
    n_act = chunk * action_dim
    seq = torch.cat([embed[ids[:1]][None], patches, embed[ids[1:]][None],
                     torch.zeros(1, n_act, embed.shape[1], dtype=torch.float64), embed[[2]][None]], dim=1)
    h = ref_llama(sd, seq, text_config(path)["num_attention_heads"], causal=False)
    num_prompt_tokens = len(ids) - 1
    act_h = h[:, num_patches + num_prompt_tokens: num_patches + num_prompt_tokens + n_act]
    hd = {k.removeprefix("module."): v.double() for k, v in
          torch.load(next(path.glob("action_head--*.pt")), weights_only=True).items()}
    x = act_h.reshape(1, chunk, -1)
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], hd[f"{n}.weight"], hd[f"{n}.bias"])  # noqa: E731
    x = F.relu(ln(x, "model.layer_norm1") @ hd["model.fc1.weight"].T + hd["model.fc1.bias"])
    for i in range(2):
        b = f"model.mlp_resnet_blocks.{i}.ffn"
        x = x + F.relu(ln(x, f"{b}.0") @ hd[f"{b}.1.weight"].T + hd[f"{b}.1.bias"])
    norm = (ln(x, "model.layer_norm2") @ hd["model.fc2.weight"].T + hd["model.fc2.bias"])[0].numpy()
    a = entry["action"]
    lo, hi = np.array(a["q01"]), np.array(a["q99"])
    return np.where(a["mask"], 0.5 * (norm + 1) * (hi - lo + 1e-8) + lo, norm)


def test_oft_actions_match_reference(oft_dir):
    vla = OpenVLA.from_pretrained(oft_dir)  # the family loader picks OFT from action_head--*.pt
    assert isinstance(vla, OpenVLAOFT)
    obs = make_obs(7, cameras=("agentview", "wrist"), state_dim=8, instruction="push the button")
    got = vla.act(obs)
    assert got.shape == (8, 7)
    np.testing.assert_allclose(got, _ref_oft(oft_dir, obs, 2, 8, 7, True), rtol=0, atol=2e-5)


def test_oft_without_proprio_matches_reference(oft_small_dir):
    vla = OpenVLAOFT.from_pretrained(oft_small_dir)
    obs = make_obs(8, instruction="close the door")
    got = vla.act(obs)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, _ref_oft(oft_small_dir, obs, 1, 2, 3, False), rtol=0, atol=2e-5)


@pytest.mark.parametrize("which", ["openvla", "oft"])
def test_batch_rows_equal_single_rows(which, openvla_dir, oft_dir):
    """Prompts of different lengths in one batch: each row computes what it would alone."""
    if which == "openvla":
        vla, extra = OpenVLA.from_pretrained(openvla_dir, unnorm_key="bridge_orig"), {}
    else:
        vla, extra = OpenVLA.from_pretrained(oft_dir), {"cameras": ("a", "b"), "state_dim": 8}
    obs = [make_obs(1, instruction="open the drawer", **extra),
           make_obs(2, instruction="put both the alphabet soup and the tomato sauce in the basket", **extra)]
    with torch.no_grad():
        batch = vla.predict_chunk(vla.preprocess(obs))
        single = torch.cat([vla.predict_chunk(vla.preprocess([o])) for o in obs])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-4)


def test_center_crop_zooms_into_the_centre():
    from vla_compress.models.openvla.processor_openvla import center_crop_tf

    flat = np.full((42, 42, 3), 77, np.uint8)
    assert (center_crop_tf(flat) == 77).all()  # x/255 * 255.5 truncates back to x
    ramp = np.broadcast_to((np.arange(42) * 6)[None, :, None], (42, 42, 3)).astype(np.uint8)
    out = center_crop_tf(ramp)
    assert out.shape == ramp.shape and out.dtype == np.uint8
    # 90% area -> side sqrt(0.9): output column 0 samples input column ~1.05, the last ~39.95
    assert 6 <= out[0, 0, 0] <= 7 and 239 <= out[0, -1, 0] <= 240
