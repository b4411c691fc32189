"""Export: compressed VLA -> runnable artifacts (ONNX now; GGUF and TensorRT later), each validated
for parity against torch and marked "ok" or "failed" in its manifest.

    from vla_compress.export import export, validate
    from vla_compress.export.onnx import OnnxExportConfig
    art = export(vla, OnnxExportConfig(precision="int8-dynamic"), "out/onnx-int8")
    report = validate(art, vla, observations)   # art.status is now "ok" or "failed"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import Artifact
from .base import ExportConfig, ExportError, Exporter, Tolerance
from .parity import ParityReport
from .registry import config_from_dict, get_exporter, register_exporter

__all__ = ["Artifact", "ExportConfig", "ExportError", "Exporter", "ParityReport", "Tolerance", "config_from_dict",
           "export", "get_exporter", "register_exporter", "validate"]


def export(vla: Any, config: ExportConfig, out_dir: str | Path, **kwargs: Any) -> Artifact:
    """Export `vla` with the exporter of `config.format`; see that exporter for extra arguments."""
    return get_exporter(config.format).export(vla, config, out_dir, **kwargs)


def validate(artifact: Artifact | str | Path, vla: Any, observations: list[dict], **kwargs: Any) -> ParityReport:
    """Run the artifact in its runtime against `vla` in torch; records ok/failed in its manifest."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    return get_exporter(artifact.format).validate(artifact, vla, observations, **kwargs)
