"""TensorRT export: engines built from the ONNX artifact's graphs (fp32, fp16, INT8 from explicit
symmetric Q/DQ, FP8 on compute capability >= 8.9), a TensorRT-readiness check that runs without
TensorRT, and the build files (build_plan.json, build_engine.py, build_engine.sh) a Jetson user
runs on the device. See exporter.py for the steps and the artifact layout."""

from .config import DEFAULT_TOLERANCES, PRECISIONS, TensorRTExportConfig
from .readiness import ReadinessReport, check_graph, require_ready

__all__ = ["DEFAULT_TOLERANCES", "PRECISIONS", "ReadinessReport", "TensorRTExportConfig", "check_graph",
           "require_ready"]
