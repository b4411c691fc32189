"""Q/DQ graphs TensorRT builds INT8 and FP8 engines from, made from the fp32 ONNX graph.

TensorRT 10 quantizes explicitly: it reads QuantizeLinear/DequantizeLinear pairs from the graph
and needs them symmetric (zero point 0), signed, per tensor on activations and without quantized
biases. The ONNX exporter's int8-static graph (ActivationSymmetric off, INT32 biases) is right
for ONNX Runtime on a CPU but not for TensorRT, so the TensorRT exporter quantizes again:

- int8: onnxruntime quantize_static, QDQ format, QInt8 weights (per output channel) and QInt8
  activations, both symmetric, MinMax calibration, biases left in float; MatMul/Gemm/Conv only.
- fp8:  the same calibration with per-tensor Q/DQ pairs on the fp32 weights, then every scale is
  re-expressed for FP8 E4M3 (scale = amax / 448, E4M3's largest finite value) and every zero point
  becomes an FP8 zero: TensorRT's (and TensorRT Model Optimizer's) FP8 recipe. onnxruntime's own
  FP8 path needs histogram calibration, which cannot mix inputs of different sequence lengths.
ONNX Runtime runs both graphs on the CPU, so their parity is measured here before any engine exists.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ...errors import ConfigError
from ..onnx.quantize import STATIC_OP_TYPES, _quiet, save_model

FP8_E4M3_MAX = 448.0
FP8_MIN_OPSET = 19


def prepare_graph(precision: str, src: Path, dst: Path, feeds: list[dict] | None, *, per_channel: bool = True,
                  external: bool = False) -> None:
    """Write the graph TensorRT builds at `precision` from the fp32 graph `src` to `dst`."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if precision in ("fp32", "fp16"):
        _copy_graph(src, dst)
        return
    if not feeds:
        raise ConfigError(f"tensorrt {precision} export needs calibration observations (pass calibration=[...])")
    with contextlib.chdir(dst.parent), _quiet():
        if precision == "int8":
            _qdq(src, dst, feeds, per_channel=per_channel, weight_pairs=False, external=external)
        elif precision == "fp8":
            tmp = dst.with_name(dst.stem + ".int8.onnx")
            try:
                _qdq(src, tmp, feeds, per_channel=False, weight_pairs=True, external=False)
                save_model(to_fp8(_load(tmp)), dst, external)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise ConfigError(f"no TensorRT graph preparation for precision {precision!r}")


def _copy_graph(src: Path, dst: Path) -> None:
    if src == dst:
        return
    shutil.copy2(src, dst)
    data = src.with_name(src.name + ".data")  # external weights keep the name the graph refers to
    if data.is_file():
        shutil.copy2(data, dst.with_name(data.name))


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _qdq(src: Path, dst: Path, feeds: list[dict], *, per_channel: bool, weight_pairs: bool, external: bool) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[dict]):
            self._it = iter(items)

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(src), str(dst), Reader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=STATIC_OP_TYPES, per_channel=per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "AddQDQPairToWeight": weight_pairs})


def to_fp8(model):
    """Turn a symmetric per-tensor INT8 Q/DQ model (weights as fp32 Q->DQ pairs) into FP8 E4M3 Q/DQ."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=True)
    half_range = (float(qmax) - float(qmin)) / 2.0  # symmetric INT8 scale = amax / half_range
    inits = {t.name: t for t in model.graph.initializer}
    new_scales: dict[str, np.ndarray] = {}
    zero_points: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in inits or node.input[1] not in inits:
            raise ConfigError(f"FP8 conversion: {node.name} has no constant scale/zero point")
        scale_name = node.input[1]
        if numpy_helper.to_array(inits[scale_name]).size != 1:
            raise ConfigError(f"FP8 conversion: {node.name} is per-channel; FP8 Q/DQ here is per tensor")
        zero_points.add(node.input[2])
        if scale_name in new_scales:
            continue
        if node.op_type == "QuantizeLinear" and node.input[0] in inits:  # a weight: its exact amax
            amax = float(np.abs(numpy_helper.to_array(inits[node.input[0]])).max())
        else:  # an activation: amax from the calibrated INT8 scale
            amax = float(numpy_helper.to_array(inits[scale_name])) * half_range
        dtype = numpy_helper.to_array(inits[scale_name]).dtype
        new_scales[scale_name] = np.asarray(max(amax, 1e-12) / FP8_E4M3_MAX, dtype=dtype)
    for name, value in new_scales.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    for name in zero_points:
        dims = list(inits[name].dims)
        n = int(np.prod(dims)) if dims else 1
        inits[name].CopyFrom(helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, dims, [0.0] * n))
    # FP8 Q/DQ exist from opset 19 (IR version 9); the ops between 18 and 19 only gained types
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < FP8_MIN_OPSET:
            opset.version = FP8_MIN_OPSET
    model.ir_version = max(model.ir_version, 9)
    return model
