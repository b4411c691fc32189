"""Quantization through llama.cpp's own quantizer (`llama_model_quantize`), and what it produced.

The quantizer reads an f32 GGUF and writes the target type, choosing per tensor as llama.cpp
does (K-quant mixes, fallbacks for rows that are not multiples of 256, 1-D tensors kept f32).
`tensor_types` reads the result back so the manifest records what each tensor really became.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from pathlib import Path

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
