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

A torch-quantized model's layers carried into the ONNX graph (export/onnx/carry.py) keep torch's
integers here too (`exclude`: the calibration quantizes only the float remainder): int8 static
layers already hold TensorRT's symmetric form (per-tensor activation Q/DQ with zero point 0,
per-channel int8 weights); int8 weight-only layers stay weight-only (DequantizeLinear on the
weight); int4 MatMulNBits, which TensorRT cannot parse, goes back to a float MatMul
(`nbits_to_float`, see INT4_NOTE for why not INT4 DequantizeLinear) and is calibrated as int8.
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
                  external: bool = False, exclude: list[str] | tuple = ()) -> None:
    """Write the graph TensorRT builds at `precision` from the fp32 graph `src` to `dst`; nodes in
    `exclude` (layers carried from torch) keep their own quantization."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if precision in ("fp32", "fp16"):
        _copy_graph(src, dst)
        return
    if not feeds:
        raise ConfigError(f"tensorrt {precision} export needs calibration observations (pass calibration=[...])")
    with contextlib.chdir(dst.parent), _quiet():
        if precision == "int8":
            _qdq(src, dst, feeds, per_channel=per_channel, weight_pairs=False, external=external, exclude=exclude)
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


def _qdq(src: Path, dst: Path, feeds: list[dict], *, per_channel: bool, weight_pairs: bool, external: bool,
         exclude: list[str] | tuple = ()) -> None:
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
                    nodes_to_exclude=list(exclude), extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
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



# TensorRT reads int4 weights only as INT4 block-wise DequantizeLinear, which needs opset 21; with
# INT8 Q/DQ beside it at opset 21, onnxruntime 1.32's extended optimizer fails to load the graph
# (a QuantizeLinear it creates gets output_dtype INT8 and a UINT8 zero point), so that graph could
# not be checked here. Carried int4 layers therefore go back to their dequantized float weight.
INT4_NOTE = ("int4 groups need INT4 block-wise DequantizeLinear (opset 21) in TensorRT, which onnxruntime 1.32 "
             "cannot load beside INT8 Q/DQ (so the graph could not be validated here): built from the dequantized "
             "weight, which the int8 calibration re-quantizes per channel")


def nbits_to_float(model) -> list[str]:
    """Rewrite every 4-bit MatMulNBits of `model` (in place) as a MatMul of the same name with its
    dequantized float weight ((nibble - 8) * block scale, transposed); returns the node names."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    out, done, dropped = [], [], set()
    for node in g.node:
        if node.op_type != "MatMulNBits":
            out.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("bits", 4) != 4 or len(node.input) > 3 and any(node.input[3:]) or node.input[1] not in inits:
            raise ConfigError(f"{node.name}: only 4-bit MatMulNBits with constant weights and the default zero "
                              "point can be turned back into a float MatMul")
        k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k].astype(np.float32) - 8.0
        scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, -1)
        w = (q.reshape(n, -1, bs) * scale[..., None]).reshape(n, k)
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{node.name}.weight_float"))
        out.append(helper.make_node("MatMul", [node.input[0], f"{node.name}.weight_float"], list(node.output),
                                    name=node.name))
        dropped.update(node.input[1:3])
        done.append(node.name)
    if done:
        del g.node[:]
        g.node.extend(out)
        used = {i for nd in g.node for i in nd.input}
        keep = [t for t in g.initializer if t.name not in dropped or t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
    return done
