"""TensorRTExportConfig: engine precision, optimization-profile ranges, builder knobs, tolerances.

Precisions (what the engine computes in; every one is built from an ONNX graph):
  fp32  the fp32 graph, TF32 disabled (the strict reference on the device).
  fp16  the fp32 graph with the FP16 builder flag: TensorRT picks fp16 kernels where faster.
  int8  explicit quantization: the graph carries symmetric INT8 Q/DQ (made here from the fp32 graph
        with calibration observations, or taken from a Q/DQ ONNX artifact given as base); built with
        INT8 + FP16 so the layers between Q/DQ pairs run in fp16. TensorRT 10 deprecates implicit
        (calibrator) INT8, so Q/DQ in the graph is the only INT8 path here.
  fp8   FP8 E4M3 Q/DQ (per tensor, scale = amax / 448) on MatMul/Gemm/Conv inputs; needs compute
        capability >= 8.9 (Ada, Hopper, Blackwell; Jetson Thor) to build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...backends import format_backend
from ...errors import ConfigError
from ..base import ExportConfig, Tolerance

PRECISIONS = tuple(format_backend("tensorrt").precisions)  # the backend record's (vla_compress/backends.py)

# The builder flags of each precision (TensorRT BuilderFlag names; trtexec flags are the same
# words in lower case). INT8/FP8 add FP16 so un-quantized layers do not fall back to fp32.
BUILDER_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16"),
                                             "fp8": ("FP8", "FP16")}

# FP8 tensor-core kernels exist from Ada (sm_89) on; Hopper is 9.0, Thor/Blackwell 10.x+.
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

# Why these numbers. fp32: GPU kernels against CPU torch with TF32 off differ by float rounding
# and reduction order (~1e-6..1e-5 on small models); 1e-3 still catches any real graph error.
# fp16: a 10-bit mantissa gives ~1e-3 relative error per op; the gate is what the robot gets,
# a mean action error under 0.01 of the [-1, 1] range. int8/fp8: the same gates as the ONNX
# int8-static export (2.5-4% mean action error, outputs pointing the same way); closed-loop
# evaluation stays the final gate for quantized engines.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-3, min_cosine=0.9999, max_action_l1=1e-3, min_token_match=1.0),
    "fp16": Tolerance(min_cosine=0.999, max_action_l1=0.01, min_token_match=0.9),
    "int8": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
    "fp8": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
}

BUILD_ENGINE = ("auto", "always", "never")


@dataclass(frozen=True)
class TensorRTExportConfig(ExportConfig):
    format: ClassVar[str] = "tensorrt"
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS

    precision: str = "fp16"
    tolerance: Tolerance | None = None
    # optimization profile: (min, opt, max) of the dynamic axes. A robot runs batch 1; the max
    # leaves room for validation batches. Text: instruction tokens after the prompt template.
    opt_batch: int = 1
    max_batch: int = 8
    opt_text: int = 32
    max_text: int = 96
    workspace_mib: int = 2048  # builder scratch memory; Jetson Orin Nano has 8 GB shared with the CPU
    optimization_level: int = 3  # TensorRT's default builder optimization level (0-5)
    build_engine: str = "auto"  # "auto": when tensorrt imports and a CUDA device is present
    timing_cache: str | None = None  # a timing cache file to reuse/extend (default: the artifact's own)
    per_channel: bool = True  # int8: one weight scale per output channel
    calibration_limit: int = 64  # int8/fp8: observations used at most
    # int8: a torch-quantized model keeps its integers and scales (export/onnx/carry.py, int4 as INT4
    # block DequantizeLinear); fp32/fp16/fp8 engines compute those layers from the dequantized weights
    carry_quantization: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("opt_batch", "max_batch", "opt_text", "max_text", "workspace_mib", "calibration_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"tensorrt export: {name} must be an integer >= 1, got {value!r}")
        if self.opt_batch > self.max_batch or self.opt_text > self.max_text:
            raise ConfigError(f"tensorrt export: opt must not exceed max (batch {self.opt_batch}/{self.max_batch}, "
                              f"text {self.opt_text}/{self.max_text})")
        if not isinstance(self.optimization_level, int) or not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"tensorrt export: optimization_level must be 0..5, got {self.optimization_level!r}")
        if self.build_engine not in BUILD_ENGINE:
            raise ConfigError(f"tensorrt export: build_engine must be one of {BUILD_ENGINE}, got {self.build_engine!r}")

    def default_tolerance(self, head: str) -> Tolerance:
        return DEFAULT_TOLERANCES[self.precision]

    @property
    def builder_flags(self) -> tuple[str, ...]:
        return BUILDER_FLAGS[self.precision]

    @property
    def needs_qdq(self) -> bool:
        """int8/fp8 engines are built from Q/DQ in the graph (explicit quantization)."""
        return self.precision in ("int8", "fp8")
