"""Post-export quantization of an fp32 ONNX graph with onnxruntime.quantization, one function per
precision behind a registry (fp32 is a copy).

Each quantizer reads `src` (fp32 .onnx, external data beside it if any) and writes `dst`.
Calibration feeds are only used by int8-static: a list of {input name: array} per graph.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional

from ...errors import ConfigError
from .config import OnnxExportConfig

Feeds = Optional[list[dict]]  # calibration feeds of one graph (int8-static only)
# (src, dst, config, external data, calibration feeds, node names to leave alone)
Quantizer = Callable[[Path, Path, OnnxExportConfig, bool, Feeds, list], None]
_QUANTIZERS: dict[str, Quantizer] = {}

# Static quantization covers the ops that hold the weights and most of the FLOPs. Quantizing
# every elementwise op too (ORT's default list: Add, Mul, Softmax, ...) adds a Q/DQ pair per op
# and compounds rounding through residual streams and norms for little speed on CPU/GPU EPs.
STATIC_OP_TYPES = ["MatMul", "Gemm", "Conv"]  # (the TensorRT exporter's Q/DQ graphs use this list)


def op_types(config: OnnxExportConfig) -> list[str]:
    """The ops an int8 precision quantizes: MatMul and Gemm, and Conv when config.quantize_conv."""
    return [op for op in STATIC_OP_TYPES if op != "Conv" or config.quantize_conv]


def register_quantizer(precision: str):
    def deco(fn: Quantizer) -> Quantizer:
        _QUANTIZERS[precision] = fn
        return fn

    return deco


def quantize(precision: str, src: Path, dst: Path, config: OnnxExportConfig, external: bool,
             calibration: list[dict] | None = None, exclude: list[str] | tuple = ()) -> None:
    """Write `src` quantized at `precision` to `dst`; nodes named in `exclude` (layers carried from a
    torch-quantized model, see carry.py) keep their form."""
    if precision not in _QUANTIZERS:
        raise ConfigError(f"no ONNX quantizer for precision {precision!r}; known: {', '.join(_QUANTIZERS)}")
    src, dst = Path(src).resolve(), Path(dst).resolve()
    # onnx's external-data writer checks whether `<name>.data` exists relative to the *working
    # directory*, not to the model; run it from the target directory so that check means what
    # it should (and a stray file where the user happens to be cannot fail the export).
    with contextlib.chdir(dst.parent), _quiet():
        _QUANTIZERS[precision](src, dst, config, external, calibration, list(exclude))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") at WARNING through the
    root logger; silence it for the call only, leaving the caller's logging as it was."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(old)


@register_quantizer("fp32")
def _fp32(src: Path, dst: Path, config: OnnxExportConfig, external: bool, calibration: Feeds, exclude: list) -> None:
    import onnx

    if src.resolve() == dst.resolve():
        return
    model = onnx.load(str(src))
    save_model(model, dst, external)


@register_quantizer("int8-dynamic")
def _int8_dynamic(src: Path, dst: Path, config: OnnxExportConfig, external: bool, calibration: Feeds,
                  exclude: list) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external,
                     op_types_to_quantize=op_types(config), nodes_to_exclude=exclude)


@register_quantizer("int8-static")
def _int8_static(src: Path, dst: Path, config: OnnxExportConfig, external: bool, calibration: Feeds,
                 exclude: list) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if not calibration:
        raise ConfigError("int8-static export needs calibration observations (pass calibration=[observation, ...])")

    class Reader(CalibrationDataReader):
        def __init__(self, feeds: list[dict]):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(src), str(dst), Reader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types(config), per_channel=config.per_channel,
                    activation_type=QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external,
                    nodes_to_exclude=exclude, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


@register_quantizer("int4-weight")
def _int4_weight(src: Path, dst: Path, config: OnnxExportConfig, external: bool, calibration: Feeds,
                 exclude: list) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=config.block_size, is_symmetric=True,
                             accuracy_level=config.accuracy_level, nodes_to_exclude=exclude)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=external)


def save_model(model, dst: Path, external: bool) -> None:
    """Save a ModelProto, its weights in one `<name>.data` file beside it when `external`."""
    import onnx

    if external:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))


def op_summary(path: Path) -> dict[str, int]:
    """Counts of the ops that tell how much of the graph is quantized (for the manifest)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    keep = {"MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger", "MatMulNBits", "QuantizeLinear",
            "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul"}
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.op_type in keep).items()))
