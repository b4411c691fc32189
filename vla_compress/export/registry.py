"""Exporter registry: format name -> a function that builds the Exporter (importing it lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .base import ExportConfig, Exporter

_EXPORTERS: dict[str, Callable[[], "Exporter"]] = {}


def register_exporter(fmt: str):
    def deco(fn: Callable[[], "Exporter"]) -> Callable[[], "Exporter"]:
        _EXPORTERS[fmt] = fn
        return fn

    return deco


def get_exporter(fmt: str) -> "Exporter":
    if fmt not in _EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; known: {', '.join(sorted(_EXPORTERS))}")
    return _EXPORTERS[fmt]()


def config_from_dict(d: dict) -> "ExportConfig":
    """An exporter config from its dict form (recipes, manifests): {"format": ..., ...}."""
    if not isinstance(d, dict) or "format" not in d:
        raise ConfigError("an export config needs a 'format' key")
    return get_exporter(d["format"]).config_cls.from_dict(d)


@register_exporter("onnx")
def _onnx() -> "Exporter":
    from .onnx.exporter import OnnxExporter

    return OnnxExporter()


@register_exporter("gguf")
def _gguf() -> "Exporter":
    from .gguf.exporter import GgufExporter

    return GgufExporter()


@register_exporter("tensorrt")
def _tensorrt() -> "Exporter":
    from .tensorrt.exporter import TensorRTExporter

    return TensorRTExporter()
