"""A Hugging Face `LlamaModel` (+ optional LM head) written as a llama-architecture GGUF.

What llama.cpp's `convert_hf_to_gguf.py` does for a Llama, with the `gguf` package:
- hyperparameters under `llama.*` (context, widths, heads, KV heads, head size, RMS eps, RoPE base);
- the tokenizer: a byte-level BPE (`tokenizers` BPE with a ByteLevel pre-tokenizer, the reference
  family's) as model "gpt2" with its merges; a byte-fallback BPE (Llama-2's tokenizer.json, as
  OpenVLA ships it) as model "llama" with SentencePiece-style scores;
- tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output`);
- Q and K projections permuted: HF applies RoPE to the two *halves* of each head (rotate_half),
  llama.cpp's llama architecture to *adjacent pairs*; permuting the rows of W_q / W_k (per head:
  row 2i <- i, row 2i+1 <- i + d/2) makes the two conventions compute the same attention.
Without an LM head the GGUF has no `output` tensor and llama.cpp ties it to `token_embd`; the
hybrid runtime then reads hidden states (embeddings mode), never those logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import ConfigError

FILE_TYPES = ("f32", "f16")


@dataclass(frozen=True)
class LlamaHParams:
    """The llama.cpp hyperparameters of a uniform Llama stack."""

    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int
    rope_theta: float
    rms_eps: float
    vocab_size: int


@dataclass
class GgufVocab:
    """What llama.cpp needs to load a vocabulary (it never tokenizes for us: the processor does)."""

    model: str  # "gpt2" | "llama"
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pre: str = "default"
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/pad/unk -> id


def llama_hparams(backbone: Any) -> LlamaHParams:
    """Hyperparameters of a HF LlamaModel, refusing what llama.cpp's llama architecture cannot run."""
    cfg = backbone.config
    layers = list(backbone.layers)
    if not layers:
        raise ConfigError("GGUF export: the backbone has no layers")
    a0, m0 = layers[0].self_attn, layers[0].mlp
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    shapes = {(l.self_attn.q_proj.out_features, l.self_attn.k_proj.out_features, l.mlp.gate_proj.out_features)
              for l in layers}
    if len(shapes) != 1:
        raise ConfigError(
            "GGUF export: backbone layers differ in head count or MLP width (a non-uniform structured pruning); "
            f"llama.cpp's llama architecture needs every layer alike, found {sorted(shapes)}")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise ConfigError(f"GGUF export: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    theta = float(rope.get("rope_theta") if isinstance(rope, dict) and rope.get("rope_theta") else
                  getattr(cfg, "rope_theta", 10000.0))
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ConfigError(f"GGUF export: the llama architecture uses SiLU, the backbone uses {cfg.hidden_act!r}")
    if a0.q_proj.out_features % head_dim or a0.k_proj.out_features % head_dim or head_dim % 2:
        raise ConfigError(f"GGUF export: projection widths are not whole heads of size {head_dim} (or it is odd)")
    return LlamaHParams(
        n_layers=len(layers), hidden=cfg.hidden_size, intermediate=m0.gate_proj.out_features,
        n_heads=a0.q_proj.out_features // head_dim, n_kv_heads=a0.k_proj.out_features // head_dim,
        head_dim=head_dim, context=int(cfg.max_position_embeddings), rope_theta=theta,
        rms_eps=float(cfg.rms_norm_eps), vocab_size=int(backbone.embed_tokens.weight.shape[0]),
    )


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp converter's permutation of Q/K rows (and biases): halves -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(backbone: Any, output_weight: Any | None, hp: LlamaHParams) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp tensor name, float32 array in torch layout) for every backbone weight."""

    def arr(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    yield "token_embd.weight", arr(backbone.embed_tokens.weight)
    for i, layer in enumerate(backbone.layers):
        at, mlp, p = layer.self_attn, layer.mlp, f"blk.{i}"
        yield f"{p}.attn_norm.weight", arr(layer.input_layernorm.weight)
        for proj, name, heads in ((at.q_proj, "attn_q", hp.n_heads), (at.k_proj, "attn_k", hp.n_kv_heads)):
            yield f"{p}.{name}.weight", permute_rope(arr(proj.weight), heads)
            if proj.bias is not None:
                yield f"{p}.{name}.bias", permute_rope(arr(proj.bias), heads)
        for proj, name in ((at.v_proj, "attn_v"), (at.o_proj, "attn_output"), (mlp.gate_proj, "ffn_gate"),
                           (mlp.up_proj, "ffn_up"), (mlp.down_proj, "ffn_down")):
            yield f"{p}.{name}.weight", arr(proj.weight)
            if proj.bias is not None:
                yield f"{p}.{name}.bias", arr(proj.bias)
        yield f"{p}.ffn_norm.weight", arr(layer.post_attention_layernorm.weight)
    yield "output_norm.weight", arr(backbone.norm.weight)
    if output_weight is not None:
        yield "output.weight", arr(output_weight)


def vocab_from_tokenizer(tok: Any, bos_id: int | None, eos_id: int | None, pad_id: int | None = None) -> GgufVocab:
    """A GgufVocab from a `tokenizers.Tokenizer` (byte-level BPE -> "gpt2", byte-fallback BPE -> "llama")."""
    from gguf import TokenType

    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"GGUF export: tokenizer model {model.get('type')!r} is not supported (BPE only)")
    n = tok.get_vocab_size()
    inv = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    if len(inv) != n or set(inv) != set(range(n)):
        raise ConfigError("GGUF export: tokenizer ids are not a contiguous range 0..vocab_size-1")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    tokens, types, scores = [], [], []
    rank = {m.replace(" ", ""): r for r, m in enumerate(merges)}
    for i in range(n):
        t = inv[i]
        tokens.append(t)
        if i in added:
            types.append(int(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED))
            if t == model.get("unk_token"):
                types[-1] = int(TokenType.UNKNOWN)
        elif not byte_level and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(int(TokenType.BYTE))
        else:
            types.append(int(TokenType.NORMAL))
        # SentencePiece scores: earlier merges score higher (what llama.cpp's SPM tokenizer ranks by)
        scores.append(-float(rank.get(t, 0 if len(t) <= 1 else len(rank))))
    special = {k: v for k, v in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)) if v is not None}
    if model.get("unk_token") is not None and tok.token_to_id(model["unk_token"]) is not None:
        special["unk"] = tok.token_to_id(model["unk_token"])
    if byte_level:
        return GgufVocab("gpt2", tokens, types, merges=merges, special=special)
    if not model.get("byte_fallback"):
        raise ConfigError("GGUF export: a BPE tokenizer must be byte-level (GPT-2 style) or byte-fallback (Llama)")
    return GgufVocab("llama", tokens, types, scores=scores, special=special)


def pad_vocab(vocab: GgufVocab, size: int) -> GgufVocab:
    """Fill an embedding table padded past the tokenizer (OpenVLA: 32000 -> 32064) with unused
    "[PADi]" tokens, as llama.cpp's converter does."""
    from gguf import TokenType

    extra = size - len(vocab.tokens)
    if extra <= 0:
        return vocab
    return GgufVocab(vocab.model, vocab.tokens + [f"[PAD{i}]" for i in range(len(vocab.tokens), size)],
                     vocab.types + [int(TokenType.UNUSED)] * extra, merges=vocab.merges,
                     scores=vocab.scores + [-1000.0] * extra if vocab.scores else [], pre=vocab.pre,
                     special=vocab.special)


def write_llama_gguf(path: str | Path, backbone: Any, output_weight: Any | None, vocab: GgufVocab,
                     file_type: str = "f32", name: str = "vla-backbone",
                     raw: dict[str, tuple[np.ndarray, Any]] | None = None, ftype: int | None = None) -> dict:
    """Write `backbone` (+ `output_weight`, the LM head, or None) to `path`; returns a summary.

    f32: every tensor float32. f16: 2-D weights float16, norms (1-D) float32, as llama.cpp's
    converter writes them (the quantizer keeps 1-D tensors in float32 as well).
    raw: tensors written as given ggml blocks instead, {name: (uint8 (rows, bytes per row),
    GGMLQuantizationType)} (torch-quantized weights, or llama.cpp's quantizer output); ftype: the
    general.file_type to record (default: that of `file_type`)."""
    import gguf

    if file_type not in FILE_TYPES:
        raise ConfigError(f"GGUF writer: file type must be one of {FILE_TYPES}, got {file_type!r}")
    hp = llama_hparams(backbone)
    if len(vocab.tokens) > hp.vocab_size:
        raise ConfigError(f"GGUF export: tokenizer has {len(vocab.tokens)} ids, the embedding table only {hp.vocab_size}")
    vocab = pad_vocab(vocab, hp.vocab_size)
    if output_weight is not None and tuple(output_weight.shape) != (hp.vocab_size, hp.hidden):
        raise ConfigError(f"GGUF export: LM head shape {tuple(output_weight.shape)} is not "
                          f"(vocab {hp.vocab_size}, hidden {hp.hidden})")
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name(name)
    for add, value in ((w.add_context_length, hp.context), (w.add_embedding_length, hp.hidden),
                       (w.add_block_count, hp.n_layers), (w.add_feed_forward_length, hp.intermediate),
                       (w.add_head_count, hp.n_heads), (w.add_head_count_kv, hp.n_kv_heads),
                       (w.add_key_length, hp.head_dim), (w.add_value_length, hp.head_dim),
                       (w.add_rope_dimension_count, hp.head_dim), (w.add_layer_norm_rms_eps, hp.rms_eps),
                       (w.add_rope_freq_base, hp.rope_theta), (w.add_vocab_size, hp.vocab_size)):
        add(value)
    w.add_file_type(ftype if ftype is not None else
                    gguf.LlamaFileType.ALL_F32 if file_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    raw = raw or {}
    if raw:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(w, vocab)
    n_params = 0
    for tname, a in gguf_tensors(backbone, output_weight, hp):
        n_params += a.size
        if tname in raw:
            data, qtype = raw[tname]
            w.add_tensor(tname, data, raw_dtype=qtype)
            continue
        w.add_tensor(tname, a.astype(np.float16) if file_type == "f16" and a.ndim == 2 else a.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"hparams": hp.__dict__, "parameters": int(n_params), "tied_output": output_weight is None,
            "tokenizer": vocab.model}


def _add_vocab(w: Any, vocab: GgufVocab) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    if vocab.scores:
        w.add_token_scores(vocab.scores)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
              "unk": w.add_unk_token_id}
    for key, tid in vocab.special.items():
        adders[key](int(tid))
    # the processor inserts BOS itself (before the image), never llama.cpp's tokenizer
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
