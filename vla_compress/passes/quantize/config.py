"""Configs of the torch quantization passes, named torchao-style after the scheme they apply.

    quantize_(vla, Int4WeightOnlyConfig(group_size=64, awq=True, where="backbone"), context)
    quantize_(vla, FqnToConfig(rules=[("action_head", None),                       # stays float
                                      ("backbone.*", Int4WeightOnlyConfig(group_size=64)),
                                      ("*", Int8WeightOnlyConfig())]))

Scope: every nn.Linear of the scoped components (all components by default); embeddings,
convolutions and norms stay float. No torch here: the transforms are in apply.py / mixed.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..base import CALIBRATION, PassConfig, Where
from ..registry import register_pass

GROUP_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Int8WeightOnlyConfig(PassConfig):
    """int8 weights, symmetric per output channel; activations stay float (W8A16/W8A32)."""

    name = "int8-weight-only"


@dataclass(frozen=True)
class Int8DynamicActivationInt8WeightConfig(PassConfig):
    """W8A8: int8 per-channel weights, activations quantized per token at run time (no data)."""

    name = "int8-dynamic"


@dataclass(frozen=True)
class Int8StaticActivationInt8WeightConfig(PassConfig):
    """W8A8 with static activation scales: per-tensor scale = percentile(|x|) / 127 over calibration."""

    name = "int8-static"
    act_percentile: float = 99.99

    def validate(self) -> None:
        self.check_range("act_percentile", 50.0, 100.0)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION})


@dataclass(frozen=True)
class Int4WeightOnlyConfig(PassConfig):
    """int4 weights, symmetric per group of `group_size` inputs, packed two per byte; `awq` searches
    activation-aware scales on calibration data (awq_grid alphas). Linears whose input width is not
    a multiple of group_size stay float (listed in the log)."""

    name = "int4-weight-only"
    group_size: int = 64
    awq: bool = False
    awq_grid: int = 20

    def validate(self) -> None:
        self.check_choice("group_size", GROUP_SIZES)
        self.check_range("awq_grid", 2, 100)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION}) if self.awq else frozenset()


SIMPLE = (Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8StaticActivationInt8WeightConfig,
          Int4WeightOnlyConfig)


def _sub_config(rule_key: str, owner: PassConfig, value: Any) -> PassConfig | None:
    if value is None or isinstance(value, SIMPLE):
        cfg = value
    elif isinstance(value, dict):
        by_name = {c.name: c for c in SIMPLE}
        name = value.get("pass")
        if name not in by_name:
            raise owner.error(rule_key, f"'pass' must be one of {', '.join(by_name)} or null (keep float), "
                                        f"got {name!r}")
        cfg = by_name[name].from_dict(value)
    else:
        raise owner.error(rule_key, f"expected a quantization config, a mapping or null, got {value!r}")
    if cfg is not None and cfg.where != Where():
        raise owner.error(rule_key, "a rule's config takes its scope from the rule's pattern; drop its 'where'")
    return cfg


@dataclass(frozen=True)
class FqnToConfig(PassConfig):
    """Per-module schemes by canonical-name pattern (torchao's ModuleFqnToConfig): for every Linear in
    scope the first rule whose pattern matches decides; a null config keeps it float; modules no rule
    matches stay float. Rules: [[pattern, config-or-null], ...] (YAML: a list of pairs)."""

    name = "fqn-to-config"
    rules: tuple = ()

    def validate(self) -> None:
        if not self.rules:
            raise self.error("rules", "give at least one [pattern, config] rule")
        parsed = []
        for i, rule in enumerate(self.rules):
            if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
                raise self.error(f"rules[{i}]", f"expected [pattern, config], got {rule!r}")
            parsed.append((rule[0], _sub_config(f"rules[{i}]", self, rule[1])))
        object.__setattr__(self, "rules", tuple(parsed))

    def needs(self) -> frozenset[str]:
        return frozenset().union(*(c.needs() for _, c in self.rules if c is not None))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["rules"] = [[p, None if c is None else c.to_dict()] for p, c in self.rules]
        return d


@dataclass(frozen=True)
class MixedPrecisionConfig(PassConfig):
    """Bits per Linear under a budget, from measured sensitivity.

    Sensitivity of a Linear at b bits: the mean |action error| (normalised action space) on the
    calibration set when that Linear alone is quantized to b bits. Starting from the lowest
    candidate everywhere, the Linear with the largest error reduction per extra weight bit is
    upgraded until the parameter-weighted mean bits would exceed `avg_bits`. 32 = stays float.
    """

    name = "mixed-precision"
    bits: tuple = (4, 8)
    avg_bits: float = 6.0
    group_size: int = 64
    awq: bool = False

    def validate(self) -> None:
        if not self.bits or any(b not in (4, 8, 32) for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise self.error("bits", f"must be distinct values among 4, 8, 32, got {list(self.bits)}")
        object.__setattr__(self, "bits", tuple(sorted(self.bits)))
        self.check_range("avg_bits", min(self.bits), 32.0)
        self.check_choice("group_size", GROUP_SIZES)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION})


for _cfg in SIMPLE:
    register_pass(_cfg, "vla_compress.passes.quantize.apply:quantize_linears")
register_pass(FqnToConfig, "vla_compress.passes.quantize.apply:quantize_by_fqn")
register_pass(MixedPrecisionConfig, "vla_compress.passes.quantize.mixed:mixed_precision")

