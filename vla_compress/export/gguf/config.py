"""GgufExportConfig: the GGUF precision (llama.cpp file type), KV-cache type and tolerances.

Precisions (the backbone GGUF; the ONNX side graphs stay fp32):
  f32      every tensor float32 (written directly by the gguf package).
  f16      2-D weights float16, norms float32.
  q8_0     llama.cpp's quantizer from the f32 file: 8-bit blocks of 32 (one fp16 scale each).
  q4_k_m   4-bit K-quant mix: most weights Q4_K (256-element super-blocks), attn_v / ffn_down
           of about half the layers and the LM head Q6_K. Rows whose length is not a multiple
           of 256 cannot be K-quantized; llama.cpp then falls back per tensor (Q4_K -> Q5_0,
           Q6_K -> Q8_0) and the manifest's `tensor_types` shows it.
  q4_0     4-bit blocks of 32 with one fp16 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...backends import format_backend
from ...errors import ConfigError
from ..base import ExportConfig, Tolerance

PRECISIONS = tuple(format_backend("gguf").precisions)  # the backend record's (vla_compress/backends.py)
KV_CACHE_TYPES = ("auto", "f32", "f16")
FLASH_ATTN = ("auto", "on", "off")

# llama.cpp's LLAMA_FTYPE_MOSTLY_* names of the quantized precisions
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}

# Why these numbers. f32: the same weights in ggml's kernels with an f32 KV cache and flash
# attention off; what differs is summation order and ggml's own exp/silu: 2e-6 on the tiny
# models' hidden states, 1e-6 on their outputs. 1e-4 (the ONNX fp32 bound) catches any wrong
# tensor, permutation, position or mask while leaving room for larger models. f16: weights
# *and* activations are rounded to f16 in ggml's f16 matmul, and the KV cache is f16: ~1e-3
# relative. Quantized: the gate is what the robot gets, as for ONNX int8/int4 (export/onnx/
# config.py): mean action error in [-1, 1] units and outputs pointing the same way. Q8_0
# quantizes activations to 8 bits too (ggml's CPU dot products run q8 x q8), hence int8-like
# bounds; 4-bit types get the int4 bounds, a little looser for Q4_0's coarser blocks. These
# are for trained policies, whose action logits are peaked: a random model's near-tied logits
# flip tokens to arbitrary bins (tests on random models pass their own tolerance). The
# closed-loop evaluation remains the final gate.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "f32": Tolerance(max_abs=1e-4, min_cosine=0.99999, max_action_l1=1e-4, min_token_match=1.0),
    "f16": Tolerance(min_cosine=0.999, max_action_l1=0.01, min_token_match=0.9),
    "q8_0": Tolerance(min_cosine=0.99, max_action_l1=0.05, min_token_match=0.5),
    "q4_k_m": Tolerance(min_cosine=0.95, max_action_l1=0.08, min_token_match=0.5),
    "q4_0": Tolerance(min_cosine=0.95, max_action_l1=0.1, min_token_match=0.5),
}


@dataclass(frozen=True)
class GgufExportConfig(ExportConfig):
    format: ClassVar[str] = "gguf"
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS

    precision: str = "f16"
    tolerance: Tolerance | None = None
    kv_cache: str = "auto"  # llama.cpp KV-cache type: "auto" = f32 for an f32 GGUF, else f16 (llama.cpp's default)
    # llama.cpp flash attention: "auto" = off for an f32 GGUF (ggml's CPU kernel accumulates in f16),
    # else llama.cpp's own "auto"
    flash_attn: str = "auto"
    opset: int = 18  # the ONNX side graphs (vision/embeddings, regression head)
    quantize_threads: int = 1  # threads llama.cpp's quantizer may use
    # a torch-quantized backbone keeps its integers and scales (quantize.carry_plan); the precision
    # types only the float tensors. False: write the dequantized weights and let llama.cpp re-quantize
    carry_quantization: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kv_cache not in KV_CACHE_TYPES:
            raise ConfigError(f"gguf export: kv_cache must be one of {KV_CACHE_TYPES}, got {self.kv_cache!r}")
        if self.flash_attn not in FLASH_ATTN:
            raise ConfigError(f"gguf export: flash_attn must be one of {FLASH_ATTN}, got {self.flash_attn!r}")
        if not isinstance(self.opset, int) or self.opset < 18:
            raise ConfigError(f"gguf export: opset must be an integer >= 18, got {self.opset!r}")
        if not isinstance(self.quantize_threads, int) or self.quantize_threads < 1:
            raise ConfigError("gguf export: quantize_threads must be an integer >= 1")

    def default_tolerance(self, head: str) -> Tolerance:
        return DEFAULT_TOLERANCES[self.precision]

    @property
    def kv_cache_type(self) -> str:
        if self.kv_cache != "auto":
            return self.kv_cache
        return "f32" if self.precision == "f32" else "f16"

    @property
    def flash_attn_mode(self) -> str:
        if self.flash_attn != "auto":
            return self.flash_attn
        return "off" if self.precision == "f32" else "auto"
