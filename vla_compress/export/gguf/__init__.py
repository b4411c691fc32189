"""GGUF export: the Llama backbone as a llama-architecture GGUF (f32/f16 written by the `gguf`
package, q8_0/q4_k_m/q4_0 by llama.cpp's quantizer) beside ONNX graphs for the vision side and
the regression head; validated by running the hybrid (runtime "llama.cpp") against torch."""

from .config import DEFAULT_TOLERANCES, PRECISIONS, GgufExportConfig

__all__ = ["DEFAULT_TOLERANCES", "PRECISIONS", "GgufExportConfig"]
