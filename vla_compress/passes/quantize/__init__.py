"""Quantization in torch: int8 weight-only, W8A8 dynamic/static, int4 group-wise (+AWQ), per-module
rules by name pattern, and sensitivity-driven mixed precision. Stored weights are really low-bit."""

from .config import (FqnToConfig, Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                     Int8StaticActivationInt8WeightConfig, Int8WeightOnlyConfig, MixedPrecisionConfig)


def quantization_scheme(vla):
    """Canonical module name -> scheme dict of every quantized module (what exporters carry)."""
    from .apply import quantization_scheme as scheme

    return scheme(vla)


__all__ = ["FqnToConfig", "Int4WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig",
           "Int8StaticActivationInt8WeightConfig", "Int8WeightOnlyConfig", "MixedPrecisionConfig",
           "quantization_scheme"]
