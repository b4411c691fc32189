"""The exporter contract: a frozen config per exporter, `export() -> Artifact`, `validate() -> ParityReport`.

An exporter turns an in-memory VLA (after any compression passes) into files another runtime
runs, and proves it: `validate` runs the artifact *in its runtime* on real observations and
compares with the torch model. The verdict is written into the artifact's manifest
(`artifact.json`), so a failed artifact stays on disk, visibly marked "failed", and runtimes
refuse it unless told otherwise.

Light module: no torch/onnx imports, so recipes can build and check configs instantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from ..errors import ConfigError, ExportError  # noqa: F401  (ExportError re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from .artifact import Artifact
    from .parity import ParityReport
    from .template import ExportJob

CONFIG_VERSION = 1


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail thresholds of a parity check; `None` means "not gated".

    max_abs / min_cosine apply to the compared tensors (the action chunk for a regression
    head, the action-bin logits for a tokens head); max_action_l1 to the mean |a - a_torch|
    of the normalised actions ([-1, 1] units); min_token_match to the fraction of identical
    greedily decoded action tokens (tokens heads only).
    """

    max_abs: float | None = None
    min_cosine: float | None = None
    max_action_l1: float | None = None
    min_token_match: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Tolerance":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"tolerance must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown tolerance keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: (None if v is None else float(v)) for k, v in d.items()})


@dataclass(frozen=True)
class ExportConfig:
    """Base of every exporter's config: which format, at which precision, with which thresholds.

    Subclasses add their own knobs (opset, block size, ...), set `format` and `PRECISIONS`, and
    give `default_tolerance(precision, head)`; `tolerance=None` means that default.
    """

    format: ClassVar[str] = ""
    PRECISIONS: ClassVar[tuple[str, ...]] = ()

    precision: str = "fp32"
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        if self.precision not in self.PRECISIONS:
            raise ConfigError(f"{self.format} export: unknown precision {self.precision!r}; "
                              f"supported: {', '.join(self.PRECISIONS)}")
        if isinstance(self.tolerance, dict):  # accept a plain mapping from YAML
            object.__setattr__(self, "tolerance", Tolerance.from_dict(self.tolerance))

    def default_tolerance(self, head: str) -> Tolerance:
        raise NotImplementedError

    def tolerance_for(self, head: str) -> Tolerance:
        return self.tolerance if self.tolerance is not None else self.default_tolerance(head)

    def check_head(self, head: str) -> None:
        """Raise ConfigError if this precision cannot be exported for this head (default: all can)."""

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tolerance"] = self.tolerance.to_dict() if self.tolerance is not None else None
        d["format"] = self.format
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExportConfig":
        d = dict(d)
        fmt = d.pop("format", cls.format)
        if fmt != cls.format:
            raise ConfigError(f"config is for format {fmt!r}, not {cls.format!r}")
        version = d.pop("version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise ConfigError(f"export config version {version} is newer than this vla-compress ({CONFIG_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"{cls.format} export config: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if d.get("tolerance") is not None:
            d["tolerance"] = Tolerance.from_dict(d["tolerance"])
        return cls(**d)


@dataclass(frozen=True)
class ExportInputs:
    """What an export may use besides the model and its config; each exporter reads what it needs.

    calibration: observations for static quantization (ONNX int8-static, TensorRT int8/fp8 from fp32).
    example: observations to trace with (>= 2; default: the calibration ones, else the family's synthetic ones).
    source: the checkpoint the model was loaded from, recorded in the manifest with its file hashes.
    base: an ONNX artifact of this same model to start from instead of tracing again (ONNX: fp32, to
          quantize; TensorRT: fp32, or a Q/DQ graph kept as is). GGUF ignores it.
    threads: threads for the runtime that computes calibration feeds.
    log: where progress lines go (TensorRT engine builds).
    """

    calibration: Sequence[dict] | None = None
    example: Sequence[dict] | None = None
    source: str | Path | None = None
    base: "Artifact | str | Path | None" = None
    threads: int = 1
    log: Callable[[str], None] | None = None


class Exporter:
    """One output format. Stateless: everything an export needs is in its config and inputs.

    `export` is a template written once (export/template.py): check the config and the model's
    head, start the manifest, write into a staging folder, save the processor files, hash every
    file, write artifact.json last, and on an unexpected error leave a visible failed artifact.
    A format implements only its own steps: `prepare` (checks and manifest keys before anything
    is written) and `write` (its files and manifest entries), and optionally `finish` (after the
    artifact is complete) and `failure_message`.
    """

    format: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how messages name the format ("ONNX", "GGUF", "TensorRT")
    config_cls: ClassVar[type[ExportConfig]] = ExportConfig

    def export(self, vla: Any, config: ExportConfig, out_dir: str | Path,
               inputs: ExportInputs | None = None) -> "Artifact":
        """Write the artifact for `vla` under `out_dir` (status "unvalidated") and return it."""
        from .template import run_export

        return run_export(self, vla, config, Path(out_dir), inputs or ExportInputs())

    # --- the format's steps (see the class docstring) ------------------------------------------
    def prepare(self, job: "ExportJob") -> None:
        """Check what this format needs (ConfigError) and add its keys to `job.manifest`."""

    def write(self, job: "ExportJob", stage: Path, tmp: Path) -> None:
        """Write the format's files into `stage` (`tmp`: scratch space) and record them in `job.manifest`."""
        raise NotImplementedError

    def finish(self, job: "ExportJob") -> None:
        """After the artifact is complete on disk (e.g. raise for an artifact written as failed)."""

    def failure_message(self, job: "ExportJob", error: Exception) -> str:
        """The ExportError message of an unexpected error during `write`."""
        return f"{self.label} export ({job.config.precision}) failed: {type(error).__name__}: {error}"

    def validate(self, artifact: "Artifact", vla: Any, observations: list[dict], threads: int = 1) -> "ParityReport":
        """Run `artifact` in its runtime on `observations`, compare with `vla` in torch, record the
        verdict in the manifest (status "ok" or "failed") and return the report."""
        raise NotImplementedError
