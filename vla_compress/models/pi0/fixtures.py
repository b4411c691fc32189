"""Tiny random π0 / π0.5 checkpoints in LeRobot's layout, with a tiny local PaliGemma-style tokenizer.

Tensor names and shapes are spelled out here from LeRobot's PI0Policy / PI05Policy state dict
(`model.paligemma_with_expert.paligemma.model.{vision_tower.vision_model, multi_modal_projector,
language_model}`, `...paligemma.lm_head` (the tied word embeddings, the one name safetensors keeps),
`model.paligemma_with_expert.gemma_expert.{model, lm_head}`, `model.state_proj`, `model.action_*`,
`model.time_mlp_*`), independently of modeling_*.py, so loading a fixture checks the modules against
the format. dtype "mixed" stores what LeRobot's `dtype: bfloat16` model holds: bf16 everywhere in
paligemma_with_expert except the vision tower, the projector and every norm (float32), and the
float32 projections; "float32" stores every tensor in float32.

The only non-LeRobot key is `vla_compress.architecture` in config.json: the tiny sizes (LeRobot's
variant names fix the real ones). The tokenizer folder (`<path>-tokenizer`, named by absolute path in
the tokenizer step's `tokenizer_name`) holds a byte-level BPE tokenizer.json with Gemma's special
tokens (<pad> 0, <eos> 1, <bos> 2, <unk> 3; <bos> added in front) and tokenizer_config.json.
"""

from __future__ import annotations

from pathlib import Path

from ...fileio import save_safetensors, write_json
from ..common import Random as _Random
from ..lerobot_layout import tiny_stats, write_files
from .checkpoint_pi0 import processor_files, stored_dtype, tiny_policy_config, write_tiny_tokenizer

# ------------------------------------------------------------------------------------------ weights
def _linear(t: dict, r: _Random, name: str, out_dim: int, in_dim: int, bias: bool = True) -> None:
    t[f"{name}.weight"] = r(out_dim, in_dim)
    if bias:
        t[f"{name}.bias"] = r(out_dim, kind="b")


def _gemma_layer(t: dict, r: _Random, name: str, g: dict, adaptive: bool) -> None:
    w, hd = g["width"], g["head_dim"]
    for norm in ("input_layernorm", "post_attention_layernorm"):
        if adaptive:
            _linear(t, r, f"{name}.{norm}.dense", 3 * w, w)
        else:
            t[f"{name}.{norm}.weight"] = r(w, kind="norm") - 1.0  # Gemma scales by (1 + w)
    _linear(t, r, f"{name}.self_attn.q_proj", g["num_heads"] * hd, w, bias=False)
    _linear(t, r, f"{name}.self_attn.k_proj", g["num_kv_heads"] * hd, w, bias=False)
    _linear(t, r, f"{name}.self_attn.v_proj", g["num_kv_heads"] * hd, w, bias=False)
    _linear(t, r, f"{name}.self_attn.o_proj", w, g["num_heads"] * hd, bias=False)
    _linear(t, r, f"{name}.mlp.gate_proj", g["mlp_dim"], w, bias=False)
    _linear(t, r, f"{name}.mlp.up_proj", g["mlp_dim"], w, bias=False)
    _linear(t, r, f"{name}.mlp.down_proj", w, g["mlp_dim"], bias=False)


def pi0_tensors(policy: dict, seed: int, embed_layout: str = "lm_head") -> dict:
    """Every tensor of a π0 / π0.5 model.safetensors for this config (float32)."""
    r, arch, kind = _Random(seed), policy["vla_compress"]["architecture"], policy["type"]
    v, b, e, vocab = arch["vision"], arch["paligemma"], arch["action_expert"], arch["vocab_size"]
    t: dict = {}
    pg = "model.paligemma_with_expert.paligemma."
    vm = pg + "model.vision_tower.vision_model"
    dv, p, side = v["hidden_size"], v["patch_size"], policy["image_resolution"][0]
    t[f"{vm}.embeddings.patch_embedding.weight"] = r(dv, 3, p, p)
    t[f"{vm}.embeddings.patch_embedding.bias"] = r(dv, kind="b")
    t[f"{vm}.embeddings.position_embedding.weight"] = r((side // p) ** 2, dv, kind="tok")
    for i in range(v["num_layers"]):
        n = f"{vm}.encoder.layers.{i}"
        for ln in ("layer_norm1", "layer_norm2"):
            t[f"{n}.{ln}.weight"], t[f"{n}.{ln}.bias"] = r(dv, kind="norm"), r(dv, kind="b")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(t, r, f"{n}.self_attn.{proj}", dv, dv)
        _linear(t, r, f"{n}.mlp.fc1", v["intermediate_size"], dv)
        _linear(t, r, f"{n}.mlp.fc2", dv, v["intermediate_size"])
    t[f"{vm}.post_layernorm.weight"], t[f"{vm}.post_layernorm.bias"] = r(dv, kind="norm"), r(dv, kind="b")
    _linear(t, r, pg + "model.multi_modal_projector.linear", b["width"], dv)
    embed = r(vocab, b["width"], kind="b")
    if embed_layout in ("lm_head", "both"):
        t[pg + "lm_head.weight"] = embed if embed_layout == "lm_head" else r(vocab, b["width"])
    if embed_layout in ("embed_tokens", "both"):
        t[pg + "model.language_model.embed_tokens.weight"] = embed
    for i in range(b["depth"]):
        _gemma_layer(t, r, f"{pg}model.language_model.layers.{i}", b, False)
    t[pg + "model.language_model.norm.weight"] = r(b["width"], kind="norm") - 1.0
    ex = "model.paligemma_with_expert.gemma_expert."
    for i in range(e["depth"]):
        _gemma_layer(t, r, f"{ex}model.layers.{i}", e, kind == "pi05")
    if kind == "pi05":
        _linear(t, r, f"{ex}model.norm.dense", 3 * e["width"], e["width"])
    else:
        t[f"{ex}model.norm.weight"] = r(e["width"], kind="norm") - 1.0
    t[f"{ex}lm_head.weight"] = r(vocab, e["width"])
    w, amax, smax = e["width"], policy["max_action_dim"], policy["max_state_dim"]
    _linear(t, r, "model.action_in_proj", w, amax)
    _linear(t, r, "model.action_out_proj", amax, w)
    if kind == "pi05":
        _linear(t, r, "model.time_mlp_in", w, w)
        _linear(t, r, "model.time_mlp_out", w, w)
    else:
        _linear(t, r, "model.state_proj", w, smax)
        _linear(t, r, "model.action_time_mlp_in", w, 2 * w)
        _linear(t, r, "model.action_time_mlp_out", w, w)
    return t


def write_tiny_pi0(path: str | Path, seed: int = 0, kind: str = "pi0", dtype: str = "mixed", stats: bool = True,
                   tokenizer_name: str | None = None, embed_layout: str = "lm_head", **policy_overrides) -> Path:
    """A tiny π0 (kind="pi0") or π0.5 (kind="pi05") checkpoint at `path`, its tokenizer folder at
    `<path>-tokenizer` (named in the tokenizer step unless `tokenizer_name` is given).
    `policy_overrides` replace config.json keys; dtype "mixed" (LeRobot's bf16 storage) or "float32"."""
    path = Path(path)
    tok_dir = write_tiny_tokenizer(path.with_name(path.name + "-tokenizer"))
    policy = {**tiny_policy_config(kind), **policy_overrides}
    path.mkdir(parents=True, exist_ok=True)
    tensors = pi0_tensors(policy, seed, embed_layout)
    if dtype == "mixed":
        tensors = {k: v.to(stored_dtype(k)) for k, v in tensors.items()}
    save_safetensors(tensors, path / "model.safetensors", metadata={"format": "pt"})
    write_files(processor_files(policy, tiny_stats(policy, seed) if stats else {},
                                tokenizer_name or str(tok_dir.resolve())), path)
    write_json(path / "train_config.json", {"dataset": {"repo_id": "tiny/fixture"}, "steps": 0, "seed": seed})
    write_json(path / "config.json", policy)
    return path


def write_tiny(path: str | Path, **kw) -> Path:
    return write_tiny_pi0(path, **kw)
