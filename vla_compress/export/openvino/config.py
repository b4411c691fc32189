"""OpenVinoExportConfig: precision, the nncf knobs of each precision, the `where:` scope, tolerances.

Precisions (what the IR holds; every one is converted from the fp32 ONNX graphs):
  fp32         the ONNX graph in OpenVINO IR, weights kept in fp32 (save_model compress_to_fp16=False).
  int8         nncf.quantize (model_type=TRANSFORMER: SmoothQuant + FakeQuantize on MatMul inputs and
               weights, fast bias correction) with calibration observations fed through the graph inputs;
               token heads' decode graphs see the KV caches the fp32 graphs' own greedy loop produces.
  int4-weight  nncf.compress_weights INT4_SYM, one fp16 scale per `group_size` weights; layers whose input
               size is not a multiple of it follow `group_size_fallback`; float activations.
  int8-weight  nncf.compress_weights INT8_ASYM, per output channel; float activations.

`where:` (components / include / exclude, as a pass's) scopes the quantization: MatMuls outside it go to
nncf's ignored scope. It is mapped through the module scopes torch.onnx records on every ONNX node
(`pkg.torch.onnx.name_scopes`); empty = every MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from ...backends import format_backend
from ...errors import ConfigError
from ...passes.base import Where
from ..base import CONFIG_VERSION, ExportConfig, Tolerance

PRECISIONS = tuple(format_backend("openvino").precisions)  # the backend record's (vla_compress/backends.py)

# Why these numbers: the ONNX exporter's (export/onnx/config.py), for the same kinds of arithmetic.
# fp32: the same graph in another kernel library run in f32 (the runtime pins INFERENCE_PRECISION_HINT
# f32: OpenVINO's CPU default is bf16 on AMX/AVX512-BF16 CPUs), so differences are float rounding.
# int8 (static W8A8) and int4-weight are gated like ONNX int8-static / int4-weight, int8-weight like
# int8-dynamic (weights-only rounding). Closed-loop evaluation remains the final gate.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, max_action_l1=1e-4, min_token_match=1.0),
    "int8": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
    "int4-weight": Tolerance(min_cosine=0.98, max_action_l1=0.08, min_token_match=0.5),
    "int8-weight": Tolerance(min_cosine=0.99, max_action_l1=0.05, min_token_match=0.5),
}

GROUP_SIZE_FALLBACK = ("ignore", "adjust", "error")  # nncf.GroupSizeFallbackMode, lower case


@dataclass(frozen=True)
class OpenVinoExportConfig(ExportConfig):
    format: ClassVar[str] = "openvino"
    PRECISIONS: ClassVar[tuple[str, ...]] = PRECISIONS

    precision: str = "fp32"
    tolerance: Tolerance | None = None
    group_size: int = 64  # int4-weight: weights per fp16 scale (along the input dimension)
    group_size_fallback: str = "ignore"  # int4-weight: a layer group_size does not divide stays int8 ("adjust": another group size)
    ratio: float = 1.0  # int4-weight: fraction of the weight layers in int4 (the rest int8, nncf's backup mode)
    calibration_limit: int = 64  # int8: observations used at most (nncf subset_size)
    where: Where = field(default_factory=Where)  # the quantization scope (see the module docstring)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "where", Where.coerce(self.where, "openvino export"))
        if not isinstance(self.group_size, int) or self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise ConfigError(f"openvino export: group_size must be a power of two >= 16, got {self.group_size!r}")
        if self.group_size_fallback not in GROUP_SIZE_FALLBACK:
            raise ConfigError(f"openvino export: group_size_fallback must be one of {GROUP_SIZE_FALLBACK}, "
                              f"got {self.group_size_fallback!r}")
        if not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
            raise ConfigError(f"openvino export: ratio must be in (0, 1], got {self.ratio!r}")
        if not isinstance(self.calibration_limit, int) or self.calibration_limit < 1:
            raise ConfigError("openvino export: calibration_limit must be an integer >= 1")

    def default_tolerance(self, head: str) -> Tolerance:
        return DEFAULT_TOLERANCES[self.precision]

    @property
    def scoped(self) -> bool:
        return bool(self.where.components or self.where.include or self.where.exclude)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tolerance"] = self.tolerance.to_dict() if self.tolerance is not None else None
        d["where"] = self.where.to_dict()
        d["format"], d["version"] = self.format, CONFIG_VERSION
        return d
