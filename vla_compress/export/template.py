"""The export template every exporter runs: the steps all formats share, written once.

    check the config type and the model's head → start the manifest → the format's `prepare`
    → in a staging folder: the format's `write`, the processor files, the file hashes, artifact.json
    → the staging folder replaces `out_dir` → warnings → the format's `finish` → the loaded Artifact

An unexpected error inside the staging block leaves a visible failed artifact (manifest only)
where the export was asked to go and is raised as an ExportError; ExportError and ConfigError
pass through as they are (the format decided what they say).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ExportError, OutputError
from .artifact import MANIFEST, Artifact, hash_files, new_manifest, replace_dir, sha256_file, staged_dir
from .family import get_export_family, weights_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from .base import ExportConfig, Exporter, ExportInputs


@dataclass
class ExportJob:
    """One export in progress: what every step reads, the manifest it fills, and `notes` that a
    format's `write` leaves for its `finish`."""

    vla: Any
    config: ExportConfig
    inputs: ExportInputs
    out_dir: Path
    family: Any  # the model family's export support (export/family.py)
    meta: dict  # family.head_meta(vla): what a runtime needs to drive the graphs
    manifest: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def run_export(exporter: "Exporter", vla: Any, config: ExportConfig, out_dir: Path, inputs: ExportInputs) -> Artifact:
    """The template (see the module docstring)."""
    if not isinstance(config, exporter.config_cls):
        raise ConfigError(f"the {exporter.format} exporter needs a {exporter.config_cls.__name__}, "
                          f"got {type(config).__name__}")
    family = get_export_family(getattr(vla, "family", ""))
    meta = family.head_meta(vla)
    config.check_head(meta["head"])
    job = ExportJob(vla, config, inputs, out_dir, family, meta)
    job.manifest = new_manifest(exporter.format, config.precision, config.to_dict(), source_info(vla, inputs.source),
                                model=meta, graphs={}, io={})
    exporter.prepare(job)
    try:
        with staged_dir(out_dir) as stage, tempfile.TemporaryDirectory(dir=stage.parent) as tmp:
            exporter.write(job, stage, Path(tmp))
            if "processor_files" not in job.manifest:  # a format may save them earlier itself
                job.manifest["processor_files"] = family.save_processor(vla, stage)
            if family.describe is not None:  # the pre/post-processing as data, for integrators
                job.manifest["processor"] = family.describe(vla)
            job.manifest["files"] = hash_files(stage)
            Artifact(stage, job.manifest).save()  # manifest last: a directory with artifact.json is complete
    except (ExportError, ConfigError, OutputError):  # OutputError: a full disk or read-only folder stops the command
        raise
    except Exception as e:
        record_failure(out_dir, job.manifest, e)
        raise ExportError(out_dir, exporter.failure_message(job, e)) from e
    if job.manifest.get("quantization_carry"):  # only once the artifact is written: a warning never fails it
        warn_not_carried(out_dir, job.manifest["quantization_carry"], stacklevel=5)
    exporter.finish(job)
    return Artifact.load(out_dir)


def source_info(vla: Any, source: str | Path | None) -> dict:
    """The manifest's `source`: family, head, preset, weights fingerprint and, when the checkpoint
    directory is known, the hashes of its files."""
    spec = getattr(vla, "action_spec", None)
    info = {"family": getattr(vla, "family", ""), "head": getattr(spec, "head", None),
            "preset": getattr(vla, "preset", None), "weights_sha256": weights_fingerprint(vla),
            "checkpoint": None, "checkpoint_files": {}}
    if source is not None:
        src = Path(source)
        info["checkpoint"] = str(src.resolve())
        if src.is_dir():
            info["checkpoint_files"] = {p.name: sha256_file(p) for p in sorted(src.iterdir())
                                        if p.is_file() and p.suffix in (".json", ".safetensors")}
    return info


def record_failure(out_dir: Path, manifest: dict, error: Exception) -> None:
    """Leave a visible failed artifact (manifest only) where the export was asked to go."""
    try:
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            return  # not ours to write into
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".failed", dir=out_dir.parent))
    except OSError:
        return
    try:
        manifest.update(status="failed", error=f"{type(error).__name__}: {error}", files={})
        Artifact(stage, manifest).save()
        replace_dir(stage, out_dir)  # a previous artifact here is replaced, not left looking current
    except OSError:
        pass  # best effort (e.g. the disk is full): the error is raised anyway
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone once renamed; never a stray .failed folder


class QuantizationCarryWarning(UserWarning):
    """A torch-quantized layer's scheme could not be carried exactly into an export."""


def warn_not_carried(out_dir: Path, summary: dict, stacklevel: int = 3) -> None:
    """Say clearly which torch-quantized layers did not keep their scheme exactly."""
    problems = {**summary.get("not_carried", {}), **summary.get("inexact", {})}
    if problems:
        by_reason: dict[str, list[str]] = {}
        for name, why in sorted(problems.items()):
            by_reason.setdefault(why, []).append(name)
        lines = "; ".join(f"{len(names)} layer(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {why}"
                          for why, names in by_reason.items())
        warnings.warn(f"{out_dir}: {len(problems)} torch-quantized layer(s) not carried exactly into the export "
                      f"(artifact.json: quantization_carry): {lines}", QuantizationCarryWarning, stacklevel=stacklevel)
