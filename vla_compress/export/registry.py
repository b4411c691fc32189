"""Exporter registry: export format -> its Exporter, from the backend records (vla_compress/backends.py).

The exporter module is imported only when asked for; a new format is a new backend record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..backends import format_backend
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .base import ExportConfig, Exporter


def get_exporter(fmt: str) -> "Exporter":
    """The Exporter of format `fmt` (or of its runtime's name: `onnxruntime` is `onnx`)."""
    return format_backend(fmt).exporter_cls()()


def config_from_dict(d: dict) -> "ExportConfig":
    """An exporter config from its dict form (recipes, manifests): {"format": ..., ...}."""
    if not isinstance(d, dict) or "format" not in d:
        raise ConfigError("an export config needs a 'format' key")
    exporter = get_exporter(d["format"])
    return exporter.config_cls.from_dict({**d, "format": exporter.format})
