"""ONNX export: one graph per regression policy step, prefill + decode-with-past for action tokens,
and fp32 / int8-dynamic / int8-static / int4-weight precisions (onnxruntime.quantization)."""

from .config import DEFAULT_TOLERANCES, PRECISIONS, OnnxExportConfig

__all__ = ["DEFAULT_TOLERANCES", "PRECISIONS", "OnnxExportConfig"]
