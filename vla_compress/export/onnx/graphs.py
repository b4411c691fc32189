"""The ONNX graphs of a policy step: wrapper modules around the unchanged model, declared by the
model's family (its ExportFamily.onnx_graphs, in models/<family>/export_<family>.py) with their
I/O contract (models/contracts.py GraphSpec): input/output names, example inputs, dynamic axes."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ...models.contracts import KV, GraphSpec, flat_cache, weight_bytes  # noqa: F401  (re-exported)
from ..family import get_export_family


def build_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    """The graphs for `vla`, traced with `example` (preprocessed inputs, batch >= 2)."""
    family = get_export_family(getattr(vla, "family", ""), "ONNX export")
    if family.onnx_graphs is None:
        raise ConfigError(f"ONNX export does not support model family {vla.family!r} (it declares no ONNX graphs)")
    return family.onnx_graphs(vla, example)
