"""OpenVINO export: IR (`.xml` + `.bin`) converted from the validated fp32 ONNX graphs, in fp32, int8
(nncf.quantize: static W8A8 with calibration observations), int4-weight and int8-weight
(nncf.compress_weights), run by the `openvino` runtime (runtime/openvino_policy.py)."""

from .config import DEFAULT_TOLERANCES, PRECISIONS, OpenVinoExportConfig

__all__ = ["DEFAULT_TOLERANCES", "PRECISIONS", "OpenVinoExportConfig"]
