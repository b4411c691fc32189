"""OnnxExportConfig: precision, opset and the parity tolerance of each precision.

Precisions (what the ONNX file holds):
  fp32          the traced graph as is.
  int8-dynamic  QInt8 weights, activations quantized on the fly (MatMulInteger): no data needed.
  int8-static   QDQ, per-channel QInt8 weights and QInt8 activations whose ranges come from
                calibration observations (MinMax); MatMul/Gemm (and Conv with quantize_conv) only
                (see quantize.py). On ONNX Runtime's CPU provider per-channel weights keep a float
                DequantizeLinear of every weight in the graph at run time and int8 x int8 products
                take a slower kernel than uint8 x int8: `per_channel: false, activation_type: uint8`
                is the form that provider fuses into QLinearMatMul (docs/results.md, "Static Q/DQ").
  int4-weight   MatMulNBits: 4-bit symmetric weights in blocks of `block_size`, fp32 activations.

optimize "ort": before quantizing, fuse the fp32 graph into ONNX Runtime's contrib kernels
(onnxscript's ORT fusions: RMSNorm -> SimplifiedLayerNormalization, GELU -> Gelu/FastGelu/BiasGelu,
rotary embedding, scaled-dot-product attention -> MultiHeadAttention); the fused graph is what the
artifact holds, so it runs on ONNX Runtime only (its CPU and CUDA providers). The fusions that fold
the Q/K/V projections into one Attention node or a residual add into SkipLayerNormalization are left
out: the first keeps those MatMuls from being quantized, and both measured slower here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...backends import format_backend
from ...errors import ConfigError
from ..base import ExportConfig, Tolerance

PRECISIONS = tuple(format_backend("onnx").precisions)  # the backend record's (vla_compress/backends.py)

# Why these numbers. fp32: the graph is the same arithmetic in another kernel library, so
# differences are float rounding (~1e-6 on the tiny models); 1e-4 leaves room for larger
# models and fused kernels while still catching any real graph difference, and every token
# must match. Quantized: the gate is on what the robot gets — mean action error under 0.05
# (int8-dynamic) / 0.08 (static, int4) of the [-1, 1] range, i.e. 2.5-4% — and on outputs
# pointing the same way (cosine), not on raw logits, whose scale depends on the model. For
# a tokens head the action error is measured on free-running decoding, so a flipped token
# costs whatever bin it flips to: a trained policy's peaked logits rarely flip, a random
# model's near-ties flip to arbitrary bins (tests on random models pass their own
# tolerance). Closed-loop evaluation remains the final gate for quantized artifacts; these
# thresholds catch broken exports and gross quantization damage.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, max_action_l1=1e-4, min_token_match=1.0),
    "int8-dynamic": Tolerance(min_cosine=0.99, max_action_l1=0.05, min_token_match=0.5),
    "int8-static": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
    "int4-weight": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
}

OPTIMIZE = ("none", "ort")
MIN_OPSET = 18  # MatMulNBits/blocked quantization and the dynamo exporter's decompositions need >= 18
EXTERNAL_DATA_BYTES = int(1.5 * 1024**3)  # protobuf caps a file at 2 GiB; keep headroom for the graph


@dataclass(frozen=True)
class OnnxExportConfig(ExportConfig):
    format: ClassVar[str] = "onnx"
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS

    precision: str = "fp32"
    tolerance: Tolerance | None = None
    opset: int = MIN_OPSET
    external_data: str = "auto"  # "auto" (when weights > 1.5 GiB) | "always" | "never"
    block_size: int = 32  # int4-weight: elements per quantization block along K
    accuracy_level: int = 4  # int4-weight: MatMulNBits compute type (4 = int8 activations on CPU)
    per_channel: bool = True  # int8-static: one weight scale per output channel
    activation_type: str = "int8"  # int8-static: "int8" or "uint8" activations (asymmetric either way)
    # int8-dynamic / int8-static: quantize Conv too. Off by default: the only Conv of these models is
    # the patch embedding, fed raw pixels, where int8 costs the most accuracy, and ORT's ConvInteger
    # ran slower than its fp32 Conv on this CPU (docs/results.md, "Optimised ONNX graphs")
    quantize_conv: bool = False
    optimize: str = "none"  # "none" | "ort": fuse the graph for ONNX Runtime (see the module docstring)
    calibration_limit: int = 64  # int8-static: observations used at most
    # a torch-quantized model (passes/quantize) keeps its own integers and scales in the graph
    # (carry.py); the precision then applies to the layers that are still float. False: trace the
    # dequantized weights and let the precision re-quantize them (what the comparison tests use)
    carry_quantization: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ConfigError(f"onnx export: opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")
        if self.external_data not in ("auto", "always", "never"):
            raise ConfigError(f"onnx export: external_data must be 'auto', 'always' or 'never', got {self.external_data!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"onnx export: block_size must be a power of two >= 16, got {self.block_size}")
        if self.activation_type not in ("int8", "uint8"):
            raise ConfigError(f"onnx export: activation_type must be 'int8' or 'uint8', got {self.activation_type!r}")
        if self.optimize not in OPTIMIZE:
            raise ConfigError(f"onnx export: optimize must be one of {', '.join(OPTIMIZE)}, got {self.optimize!r}")
        if self.calibration_limit < 1:
            raise ConfigError("onnx export: calibration_limit must be >= 1")

    def default_tolerance(self, head: str) -> Tolerance:
        return DEFAULT_TOLERANCES[self.precision]

    def use_external_data(self, weight_bytes: int) -> bool:
        return self.external_data == "always" or (self.external_data == "auto" and weight_bytes > EXTERNAL_DATA_BYTES)
