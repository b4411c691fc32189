"""Export: compressed VLA -> runnable artifacts (ONNX, GGUF, TensorRT: the backends with an export
format, vla_compress/backends.py), each validated for parity against torch and marked "ok" or
"failed" in its manifest.

    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    art = export(vla, OnnxExportConfig(precision="int8-dynamic"), "out/onnx-int8")
    report = validate(art, vla, observations)   # art.status is now "ok" or "failed"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .artifact import Artifact
from .base import ExportConfig, ExportError, ExportInputs, Exporter, Tolerance
from .parity import ParityReport
from .registry import config_from_dict, get_exporter

__all__ = ["Artifact", "ExportConfig", "ExportError", "ExportInputs", "Exporter", "ParityReport", "Tolerance",
           "config_from_dict", "export", "get_exporter", "validate"]


def export(vla: Any, config: ExportConfig, out_dir: str | Path, *, calibration: Sequence[dict] | None = None,
           example: Sequence[dict] | None = None, source: str | Path | None = None,
           base: Artifact | str | Path | None = None, threads: int = 1,
           log: Callable[[str], None] | None = None) -> Artifact:
    """Export `vla` with the exporter of `config.format`; the keywords are ExportInputs' fields
    (each exporter reads those it needs)."""
    inputs = ExportInputs(calibration=calibration, example=example, source=source, base=base, threads=threads, log=log)
    return get_exporter(config.format).export(vla, config, out_dir, inputs)


def validate(artifact: Artifact | str | Path, vla: Any, observations: list[dict], threads: int = 1) -> ParityReport:
    """Run the artifact in its runtime against `vla` in torch; records ok/failed in its manifest."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    return get_exporter(artifact.format).validate(artifact, vla, observations, threads=threads)
