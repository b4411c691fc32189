"""TensorRT-readiness of an ONNX graph, checked here without TensorRT.

What TensorRT 10's ONNX parser accepts, from its documented operator support (onnx-tensorrt
docs/operators.md for TensorRT 10.x, "Supported ONNX Operators", opset 9 to 20): the ops marked
supported there, in the default ONNX domain only (a custom-domain op such as ORT's
com.microsoft.MatMulNBits needs a plugin), and explicit quantization only: QuantizeLinear /
DequantizeLinear with zero points equal to 0 (symmetric), INT8, FP8 or INT4 (weights only),
each QuantizeLinear feeding DequantizeLinear, activations per tensor. ORT's integer ops
(MatMulInteger, DynamicQuantizeLinear, QLinear*) are not supported.

`check_graph(path, precision)` returns a ReadinessReport (problems = the build would fail or
would not be the precision asked for; warnings = worth knowing); `require_ready` raises an
ExportError listing the offending ops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import ExportError

# Operators marked "Y" in TensorRT 10's ONNX operator support matrix.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

OPSET_RANGE = (9, 20)  # the opsets TensorRT 10.0/10.1's parser documents; later 10.x parsers go further

# Unsupported ops this project's own exports can produce, with what to do instead.
SUGGESTIONS = {
    "MatMulNBits": ("INT4 MatMulNBits (onnxruntime's com.microsoft op) is not supported by TensorRT: export INT8 "
                    "(--precision int8), FP8 (--precision fp8, compute capability >= 8.9), or TensorRT's own INT4 "
                    "weight-only quantization through TensorRT Model Optimizer (ModelOpt INT4-AWQ, which emits "
                    "blocked INT4 DequantizeLinear)"),
    "MatMulInteger": ("dynamic INT8 (MatMulInteger) is ONNX Runtime-only: build INT8 from explicit symmetric Q/DQ "
                      "(--format tensorrt --precision int8 from the fp32 graph)"),
    "DynamicQuantizeLinear": "dynamic activation quantization is ONNX Runtime-only: use explicit symmetric Q/DQ (--precision int8)",
    "QLinearMatMul": "QOperator-format quantization is not supported: quantize in QDQ format (--precision int8)",
    "QLinearConv": "QOperator-format quantization is not supported: quantize in QDQ format (--precision int8)",
    "ConvInteger": "ConvInteger is ONNX Runtime-only: use explicit symmetric Q/DQ (--precision int8)",
}

# ONNX TensorProto element types
_INT8, _UINT8, _INT32, _INT4, _FP8_E4M3FN, _DOUBLE = 3, 2, 6, 22, 17, 11
QDQ_TYPES = {_INT8: "int8", _FP8_E4M3FN: "fp8", _INT4: "int4"}
_TYPE_NAMES = {_INT8: "INT8", _UINT8: "UINT8", _INT32: "INT32", _INT4: "INT4", _FP8_E4M3FN: "FP8E4M3FN", 4: "UINT16",
               5: "INT16", 21: "UINT4", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ"}


@dataclass
class ReadinessReport:
    graph: str
    precision: str
    opset: int
    ops: dict[str, int]
    qdq: dict[str, int]  # Q/DQ nodes per quantized type ("int8", "fp8", "int4")
    problems: list[dict] = field(default_factory=list)  # {op, count, nodes, problem}
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, op: str, node: str, problem: str) -> None:
        for p in self.problems:
            if p["op"] == op and p["problem"] == problem:
                p["count"] += 1
                if len(p["nodes"]) < 3:
                    p["nodes"].append(node)
                return
        self.problems.append({"op": op, "count": 1, "nodes": [node], "problem": problem})

    def summary(self) -> str:
        if self.ok:
            return f"{Path(self.graph).name}: TensorRT-ready for {self.precision} ({sum(self.ops.values())} nodes)"
        lines = [f"{Path(self.graph).name}: not TensorRT-ready for {self.precision}:"]
        lines += [f"  {p['op']} x{p['count']} (e.g. {', '.join(p['nodes'])}): {p['problem']}" for p in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def check_graph(path: str | Path, precision: str | None = None) -> ReadinessReport:
    """Check one ONNX file for TensorRT 10. `precision` is the engine precision it will be built at
    (fp32/fp16/int8/fp8); None infers it from the graph's Q/DQ (none: fp16)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(path, "ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ExportError(path, f"not a readable ONNX model ({e})") from None
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = ReadinessReport(str(path), precision or "", opset, dict(Counter(n.op_type for n in graph.node)), {})
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        report.warnings.append(f"opset {opset} is outside the range TensorRT 10.0/10.1 document ({OPSET_RANGE[0]}-"
                               f"{OPSET_RANGE[1]}); newer TensorRT 10.x parsers may accept it")
    for node in graph.node:
        name = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            report.add(f"{node.domain}.{node.op_type}", name, SUGGESTIONS.get(
                node.op_type, f"custom-domain op ({node.domain}) needs a TensorRT plugin"))
        elif node.op_type not in SUPPORTED_OPS:
            report.add(node.op_type, name, SUGGESTIONS.get(node.op_type, "not supported by TensorRT 10's ONNX parser"))
    _check_qdq(model, report)
    _check_inputs(model, report)
    _check_double(model, report)
    if precision is None:
        report.precision = "fp8" if report.qdq.get("fp8") else "int8" if report.qdq.get("int8") else "fp16"
    _check_precision(report)
    return report


def require_ready(reports: dict[str, ReadinessReport], where: str | Path) -> None:
    """Raise an ExportError naming every offending op when any graph is not ready."""
    bad = [r for r in reports.values() if not r.ok]
    if bad:
        raise ExportError(where, "not TensorRT-ready:\n" + "\n".join(r.summary() for r in bad))


# --- the checks -------------------------------------------------------------------------------
def _constants(model) -> dict:
    """name -> TensorProto of initializers and Constant outputs (values read lazily)."""
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out


def _check_qdq(model, report: ReadinessReport) -> None:
    import numpy as np
    from onnx import numpy_helper

    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    qdq: Counter = Counter()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        zp = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and zp is None:
            report.add(node.op_type, name, "zero point is computed at run time; TensorRT needs a constant zero point of 0")
        qtype = zp.data_type if zp is not None else None
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            qtype = consts[node.input[0]].data_type  # the stored weight's type
        if qtype is None:
            qtype = _INT8  # no zero point: TensorRT's parser treats the Q/DQ as INT8
        if qtype == _INT32:
            report.add(node.op_type, name, "INT32 DequantizeLinear (a quantized bias) is not supported: keep biases "
                                           "in float (onnxruntime quantize_static extra option QuantizeBias=False)")
            continue
        if qtype not in QDQ_TYPES:
            report.add(node.op_type, name, f"{_TYPE_NAMES.get(qtype, qtype)} quantization is not supported: TensorRT "
                                           "takes signed INT8, FP8 E4M3FN or INT4 (weights) Q/DQ")
            continue
        qdq[QDQ_TYPES[qtype]] += 1
        if zp is not None and zp.data_location != 1:  # EXTERNAL = 1: not readable without the data file
            if np.any(numpy_helper.to_array(zp).astype(np.float32) != 0):
                report.add(node.op_type, name, "non-zero zero point (asymmetric quantization): TensorRT supports "
                                               "symmetric Q/DQ only (zero point 0); quantize with ActivationSymmetric "
                                               "and WeightSymmetric")
        if node.op_type == "QuantizeLinear":
            users = consumers.get(node.output[0], [])
            if not users or any(u.op_type != "DequantizeLinear" for u in users):
                report.add(node.op_type, name, "QuantizeLinear output must feed DequantizeLinear only (explicit Q/DQ pairs)")
            scale = consts.get(node.input[1])
            if node.input[0] not in consts and (scale is None or len(scale.dims) > 0 and _numel(scale) > 1):
                report.add(node.op_type, name, "activations must be quantized per tensor (one constant scale)")
        else:
            src = node.input[0]
            if src not in consts and getattr(producers.get(src), "op_type", None) != "QuantizeLinear":
                report.add(node.op_type, name, "DequantizeLinear input must be a QuantizeLinear output or a constant weight")
            if qtype == _INT4 and src not in consts:
                report.add(node.op_type, name, "INT4 is weight-only in TensorRT: INT4 DequantizeLinear needs a constant input")
    report.qdq = dict(qdq)


def _numel(t) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def _check_inputs(model, report: ReadinessReport) -> None:
    consts = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name in consts:
            continue
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if not d.dim_param and d.dim_value <= 0:
                report.add("input", v.name, f"axis {i} is dynamic without a name: no optimization profile can be "
                                            "derived for it (export with named dynamic axes)")


def _check_double(model, report: ReadinessReport) -> None:
    """TensorRT has no float64: its ONNX parser casts DOUBLE weights and Cast-to-DOUBLE nodes down to
    float32 (e.g. a flow head's sinusoidal time embedding, computed in float64 in torch): worth knowing, not a
    build failure. A float64 graph input or output cannot be bound at all."""
    casts = sum(1 for n in model.graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == _DOUBLE for a in n.attribute))
    consts = sum(1 for t in _constants(model).values() if t.data_type == _DOUBLE)
    if casts or consts:
        report.warnings.append(f"float64 computation ({casts} Cast to DOUBLE, {consts} DOUBLE constants): TensorRT's "
                               "parser computes it in float32")
    for v in (*model.graph.input, *model.graph.output):
        if v.type.tensor_type.elem_type == _DOUBLE:
            report.add("io", v.name, "a float64 graph input/output: TensorRT has no DOUBLE tensors")


def _check_precision(report: ReadinessReport) -> None:
    p, q = report.precision, report.qdq
    if p == "int8" and not q.get("int8"):
        report.add("graph", Path(report.graph).name, "int8 needs explicit INT8 Q/DQ in the graph (TensorRT 10 "
                                                     "deprecates implicit calibration); quantize the fp32 graph first")
    if p == "fp8" and not q.get("fp8"):
        report.add("graph", Path(report.graph).name, "fp8 needs FP8 E4M3 Q/DQ in the graph; quantize the fp32 graph first")
    if p in ("fp32", "fp16") and (q.get("int8") or q.get("fp8")):
        kinds = "/".join(k for k in ("int8", "fp8") if q.get(k))
        report.add("graph", Path(report.graph).name, f"the graph carries {kinds} Q/DQ: build it with precision "
                                                     f"{kinds.split('/')[0]} (the {p} builder flags cannot run it)")
    mixed = [k for k in ("int8", "fp8", "int4") if q.get(k) and k != p]
    if p in ("int8", "fp8") and mixed:
        report.warnings.append(f"the graph also carries {'/'.join(mixed)} Q/DQ; the builder flags for them are set too")


def main(argv: list[str] | None = None) -> int:
    """`python -m vla_compress.export.tensorrt PATH [--precision P]...`: check ONNX files or
    every graph of artifact directories; prints one summary per graph, exit 1 if any is not ready."""
    import argparse

    from ...errors import VLACompressError

    ap = argparse.ArgumentParser(prog="python -m vla_compress.export.tensorrt",
                                 description="Check ONNX graphs against TensorRT 10's ONNX operator support.")
    ap.add_argument("paths", nargs="+", type=Path, help=".onnx files or artifact directories")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8", "fp8"),
                    help="engine precision (default: inferred from the graph's Q/DQ)")
    args = ap.parse_args(argv)
    ready = True
    try:
        for path in args.paths:
            files = sorted(path.glob("*.onnx")) if path.is_dir() else [path]
            if not files:
                raise ExportError(path, "no .onnx files in this directory")
            for f in files:
                report = check_graph(f, args.precision)
                ready &= report.ok
                print(f"{path}: {report.summary()}")
                for w in report.warnings:
                    print(f"  warning: {w}")
    except VLACompressError as e:
        print(f"error: {e}")
        return 2
    return 0 if ready else 1
