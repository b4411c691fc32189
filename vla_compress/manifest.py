"""The run manifest's schema: its version and the typed record of each variant.

`vla-compress compress` writes RUN_DIR/manifest.json (pipeline/stages.py); the gate and the HTML
report read it back. A variant is one model the run produced and measured:

    baseline           the checkpoint, in torch
    compressed         after the recipe's passes, in torch (only when there are passes)
    <format>-<prec>    one per export (`onnx-int8-dynamic`), run by its format's runtime

Version 2 (this one) writes the variants as `Variant.to_dict()`: the same keys version 1 wrote as
plain dicts, with runtime names canonical (backends.py: `onnxruntime`, where version 1 wrote
`onnx`). Version 1 manifests still load: their variants read into the same records.
Torch-free and below everything that reads it (pipeline, evaluate, report).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .backends import canonical_or_same
from .errors import ConfigError

MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("checkpoint", "artifact")


@dataclass(frozen=True)
class Variant:
    """One variant of a run (see the module docstring); None fields other than `key` are not written."""

    kind: str  # "checkpoint" (a model directory run in torch) | "artifact" (an export run by its runtime)
    runtime: str  # canonical backend name (backends.py)
    source: str  # the checkpoint it was made from (what the profiler traces for estimates)
    key: str | None = None  # the key of the stage that produced it (None: it could not be produced)
    path: str | None = None  # the checkpoint or artifact directory
    format: str | None = None  # artifacts: export format
    precision: str | None = None  # artifacts: export precision
    status: str | None = None  # artifacts: ok | failed | unvalidated (artifact.json), or error (export raised)
    parity: dict | None = None  # the artifact's ParityReport, or the compressed model vs the baseline
    files: dict | None = None  # artifacts: {file: {sha256, bytes}}
    passes: list | None = None  # compressed: the compression log
    error: str | None = None  # status "error": why the export did not happen
    eval_skipped: str | None = None  # why it was not evaluated in closed loop

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"variant kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    @property
    def runnable(self) -> bool:
        """Whether it can be evaluated at all (an artifact that failed or was not produced cannot)."""
        return self.status not in ("failed", "error")

    def skipped(self, why: str) -> "Variant":
        return replace(self, eval_skipped=why)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "key"}  # key: null when not produced

    @classmethod
    def from_dict(cls, d: dict, name: str = "variant") -> "Variant":
        if not isinstance(d, dict):
            raise ConfigError(f"manifest variant {name!r} must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        missing = [k for k in ("kind", "runtime", "source") if k not in d]
        if unknown or missing:
            raise ConfigError(f"manifest variant {name!r}: " + "; ".join(
                ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
        return cls(**{**d, "runtime": canonical_or_same(str(d["runtime"]))})


def check_version(manifest: Any, where: str) -> None:
    """ConfigError unless `manifest` is a run manifest this version reads."""
    version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise ConfigError(f"{where}: not a vla-compress run manifest (or an incompatible version: "
                          f"{version!r}; this vla-compress reads {', '.join(map(str, READABLE_VERSIONS))})")


def load_variants(manifest: dict) -> dict[str, Variant]:
    """The manifest's variants as records, in their order (empty when the run has none yet)."""
    return {name: Variant.from_dict(v, name) for name, v in (manifest.get("variants") or {}).items()}


def dump_variants(variants: dict[str, Variant]) -> dict[str, dict]:
    """The manifest's `variants` entry."""
    return {name: v.to_dict() for name, v in variants.items()}
