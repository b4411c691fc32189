"""Quantization through llama.cpp's own quantizer (`llama_model_quantize`), and what it produced.

The quantizer reads an f32 GGUF and writes the target type, choosing per tensor as llama.cpp
does (K-quant mixes, fallbacks for rows that are not multiples of 256, 1-D tensors kept f32).
`tensor_types` reads the result back so the manifest records what each tensor really became.

A backbone quantized in torch (passes/quantize) keeps its scheme instead (`carry_plan`): each
quantized Linear becomes the nearest GGUF type built from torch's own integers and scales, and
the export precision only types the tensors that are still float.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, ExportError
from .config import FTYPES


def quantize_gguf(src: Path, dst: Path, precision: str, threads: int = 1) -> None:
    """llama.cpp's quantizer: `src` (f32 GGUF) -> `dst` at `precision` (q8_0 | q4_k_m | q4_0)."""
    if precision not in FTYPES:
        raise ConfigError(f"no llama.cpp quantization type for precision {precision!r}; known: {', '.join(FTYPES)}")
    from ...runtime.llamacpp_engine import load_llama_cpp

    llama_cpp = load_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[precision])
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(dst, f"llama.cpp's quantizer failed ({precision}, return code {rc})")


def tensor_types(path: Path) -> dict:
    """{"counts": {ggml type: n tensors}, "by_tensor": {name: type}} of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    by_tensor = {t.name: t.tensor_type.name for t in reader.tensors}
    return {"counts": dict(sorted(Counter(by_tensor.values()).items())), "by_tensor": by_tensor}


# --- carrying a torch-quantized backbone's scheme into GGUF types ---------------------------------
# Which GGUF tensor each Linear of a Llama layer becomes (writer.gguf_tensors' names).
LAYER_TENSORS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
QK = 32  # values per Q8_0 / Q4_0 block
ACTIVATION_NOTE = ("; activations: ggml quantizes them to its own Q8 blocks of 32 at run time, not with torch's "
                   "{} scale")


@dataclass
class CarriedTensor:
    """One GGUF tensor made from a torch-quantized Linear: raw ggml blocks (rows, bytes per row)."""

    module: str
    scheme: str
    ggml_type: str
    data: np.ndarray
    exact: bool
    note: str

    def describe(self) -> dict:
        return {"module": self.module, "scheme": self.scheme, "ggml_type": self.ggml_type, "exact": self.exact,
                "note": self.note}


def carry_plan(backbone: Any, output: Any, names: dict[int, str], n_heads: int, n_kv_heads: int,
               ) -> tuple[dict[str, CarriedTensor], dict[str, str]]:
    """GGUF tensors for the torch-quantized Linears of a Llama `backbone` (and its LM head `output`,
    a module or None): {tensor name: CarriedTensor}, and {module: why not carried}.
    int8 per row -> Q8_0 with torch's int8 values (its per-row scale as each block's float16 scale);
    int4 groups of >= 32 -> Q4_0 with torch's nibbles and group scales (exact); int4 with AWQ
    smoothing or groups of 16 -> the effective weight re-quantized to Q4_1 (said so)."""
    from .writer import permute_rope

    out: dict[str, CarriedTensor] = {}
    skipped: dict[str, str] = {}
    mods = []
    for i, layer in enumerate(backbone.layers):
        for rel, short in LAYER_TENSORS.items():
            m = layer
            for part in rel.split("."):
                m = getattr(m, part)
            heads = n_heads if short == "attn_q" else n_kv_heads if short == "attn_k" else None
            mods.append((f"blk.{i}.{short}.weight", m, heads))
    if output is not None:
        mods.append(("output.weight", output, None))
    for tensor, m, heads in mods:
        if not getattr(m, "is_quantized", False):
            continue
        name = names.get(id(m), tensor)
        if m.in_features % QK:
            skipped[name] = (f"in_features {m.in_features} is not a multiple of {QK} (GGUF's block): written as its "
                             "dequantized float weight, then typed by the export precision")
            continue
        permute = (lambda a, h=heads: permute_rope(a, h)) if heads else (lambda a: a)
        out[tensor] = _encode(m, name, permute)
    return out, skipped


def _encode(m: Any, name: str, permute: Any) -> CarriedTensor:
    import gguf

    from ...nn.quantized import unpack_int4

    fmt = m.scheme["format"]
    rows = m.out_features
    if fmt.startswith("int8"):
        q = permute(m.qweight.detach().cpu().numpy())
        scale = permute(m.scale.detach().float().cpu().numpy())
        half = scale.astype(np.float16)
        err = float(np.max(np.abs(half.astype(np.float32) - scale) / np.maximum(scale, 1e-30)))
        nb = m.in_features // QK
        d = np.repeat(half[:, None], nb, axis=1).view(np.uint8).reshape(rows, nb, 2)
        data = np.concatenate([d, q.reshape(rows, nb, QK).view(np.uint8)], axis=-1).reshape(rows, -1)
        note = (f"torch's int8 values; its per-row float32 scale is each 32-value block's float16 scale "
                f"(largest relative scale change {err:.1e})")
        if fmt != "int8_weight_only":
            note += ACTIVATION_NOTE.format("per-tensor static" if fmt == "int8_static" else "per-token dynamic")
        return CarriedTensor(name, fmt, "Q8_0", data, err == 0.0, note)
    if fmt != "int4_weight_only":
        raise ConfigError(f"GGUF export: no GGUF type for quantization scheme {fmt!r} ({name})")
    g = m.group_size
    if m.smooth is None and g % QK == 0:
        q = permute(unpack_int4(m.qweight.detach().cpu()).numpy())  # values in [-8, 7]
        scale = permute(m.scale.detach().cpu().numpy())  # float16 (rows, in/g), already ggml's scale type
        nb = m.in_features // QK
        d = np.repeat(scale, g // QK, axis=1).view(np.uint8).reshape(rows, nb, 2)
        u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(rows, nb, QK)
        qs = u[..., : QK // 2] | (u[..., QK // 2:] << np.uint8(4))  # Q4_0: value j low nibble, j + 16 high
        data = np.concatenate([d, qs], axis=-1).reshape(rows, -1)
        return CarriedTensor(name, fmt, "Q4_0", data, True,
                             f"torch's int4 values (+8) and float16 group scales (groups of {g} = {g // QK} Q4_0 "
                             "blocks) exactly")
    why = ("AWQ's per-input smoothing has no llama.cpp counterpart (the GGUF backbone has no place to divide its "
           "inputs)" if m.smooth is not None else f"groups of {g} are finer than GGUF's 32-value blocks")
    # Q4_1 (a scale and a minimum per 32 values) fits values that are no longer on a symmetric
    # grid better than Q4_0; gguf-py cannot write K-quants, so Q4_K is not an option here
    w = permute(m.dequantize().detach().float().cpu().numpy())
    data = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    return CarriedTensor(name, fmt, "Q4_1", data, False,
                         f"{why}: its effective float weight is re-quantized to Q4_1 (nearest 4-bit GGUF type)")


def quantized_tensors(path: Path) -> dict[str, tuple[np.ndarray, Any]]:
    """{name: (raw ggml blocks, GGMLQuantizationType)} of the quantized (not F32/F16) tensors of a GGUF."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    return {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors
            if t.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)}
