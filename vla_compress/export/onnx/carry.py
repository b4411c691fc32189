"""Carry a torch-quantized model's scheme into its ONNX graphs instead of re-quantizing it.

A model quantized by a vla-compress pass (passes/quantize, saved with quantization.json) holds
integer weights and scales. Traced as it is, the exporter would constant-fold them into float
weights and an ONNX quantizer would then choose new integers and scales. Instead:

1. `float_stand_ins(wrapper, vla)` swaps every quantized Linear reachable from a graph's wrapper
   module for a float nn.Linear holding its dequantized weight (put back afterwards) and returns
   the quantized modules by canonical name;
2. after tracing, `carry_quantization(model, modules)` finds each one's MatMul/Gemm by the content
   of its weight (the exporter renames and transposes constants, so names cannot be used) and
   replaces it with the ONNX form of the same scheme, with torch's integers byte for byte:

   int8 weight-only    DequantizeLinear(int8 W^T, per-row scale, axis=1) -> MatMul        exact
   int8 static (W8A8)  QuantizeLinear/DequantizeLinear on the input with the calibrated
                       per-tensor scale (zero point 0) -> MatMul with the weight above   float rounding
   int8 dynamic (W8A8) the weight above, and torch's per-token symmetric activation
                       quantization as float ops (ReduceMax/Div/Round/Clip/Mul): ONNX's
                       DynamicQuantizeLinear is per tensor, asymmetric and uint8          float rounding
   int4 groups (+AWQ)  MatMulNBits (com.microsoft): the same nibbles (q + 8, even index in the
                       low nibble, which is MatMulNBits' layout with its default zero point 8),
                       the float16 group scales widened to float32, accuracy_level 0 (float
                       activations, as torch); AWQ's smoothing as Div(x, s) before it       exact weights

Quantized modules whose weight is not a MatMul/Gemm constant in the traced graph (read directly,
e.g. a tied embedding) cannot be carried: they are listed with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator

MS_DOMAIN = "com.microsoft"
FORMS = {
    "int8_weight_only": "DequantizeLinear(int8 weight) -> MatMul",
    "int8_static": "QuantizeLinear/DequantizeLinear(input, calibrated scale) -> MatMul(DequantizeLinear(int8 weight))",
    "int8_dynamic": "per-token int8 input (ReduceMax/Div/Round/Clip) -> MatMul(DequantizeLinear(int8 weight)) * scale",
    "int4_weight_only": "MatMulNBits (4 bits, same blocks/scales, zero point 8)",
}


@contextlib.contextmanager
def float_stand_ins(wrapper: Any, vla: Any) -> Iterator[dict[str, Any]]:
    """Within the block every quantized Linear under `wrapper` is a float nn.Linear with its
    dequantized weight; yields {name: quantized module} (canonical names where the module is the
    model's own, else its path in the wrapper). The original modules are always put back."""
    from torch import nn

    from ...nn.quantized_state import quantized_modules

    canonical = {id(m): n for n, m in quantized_modules(vla).items()}
    swapped: list[tuple[Any, str, Any]] = []
    stand: dict[int, Any] = {}
    found: dict[str, Any] = {}
    try:
        for parent_name, parent in list(wrapper.named_modules()):
            for attr, child in list(parent._modules.items()):
                if child is None or not getattr(child, "is_quantized", False):
                    continue
                if id(child) not in stand:
                    w = child.dequantize().detach().float()
                    lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                    device=w.device)
                    lin.weight = nn.Parameter(w.clone(), requires_grad=False)
                    if child.bias is not None:
                        lin.bias = nn.Parameter(child.bias.detach().float().clone(), requires_grad=False)
                    stand[id(child)] = lin.eval()
                    found[_name(child, canonical, f"{parent_name}.{attr}" if parent_name else attr)] = child
                swapped.append((parent, attr, child))
                parent._modules[attr] = stand[id(child)]
        yield found
    finally:
        for parent, attr, child in reversed(swapped):
            parent._modules[attr] = child


def _name(m: Any, canonical: dict[int, str], path: str) -> str:
    """Canonical name of a model module; `name[start:]` for rows taken from one (take_rows)."""
    if id(m) in canonical:
        return canonical[id(m)]
    src = getattr(m, "rows_of", None)
    if src is not None and id(src[0]) in canonical:
        return f"{canonical[id(src[0])]}[{src[1]}:]"
    return path


def _digest(a: Any) -> str:
    import numpy as np

    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def _weight_of(node: Any, inits: dict, producers: dict) -> tuple[Any, str | None, str | None] | None:
    """(the node's weight as an nn.Linear weight (out, in), its initializer, the Transpose node
    between them or None) for a MatMul/Gemm whose second input is a constant; else None."""
    from onnx import helper, numpy_helper

    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                   or attrs.get("beta", 1.0) != 1.0):
        return None
    b = node.input[1]
    if b in inits:
        arr = numpy_helper.to_array(inits[b])
        if arr.ndim != 2:
            return None
        trans_b = node.op_type == "Gemm" and attrs.get("transB", 0)
        return (arr if trans_b else arr.T), b, None
    t = producers.get(b)
    if node.op_type == "MatMul" and t is not None and t.op_type == "Transpose" and t.input[0] in inits:
        perm = [list(helper.get_attribute_value(a)) for a in t.attribute if a.name == "perm"]
        arr = numpy_helper.to_array(inits[t.input[0]])
        if arr.ndim == 2 and (not perm or perm[0] == [1, 0]):
            return arr, t.input[0], t.name
    return None


def carry_quantization(model: Any, modules: dict[str, Any]) -> dict:
    """Replace, in ONNX `model` (in place), the MatMul/Gemm of every module in `modules` (name ->
    torch quantized Linear) with its scheme's ONNX form; returns {"layers": {name: {...}},
    "not_carried": {name: reason}, "nodes": [names of the carried matmul nodes]}."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    wanted: dict[str, list[str]] = {}
    for name, m in modules.items():
        wanted.setdefault(_digest(m.dequantize().detach().float().cpu().numpy()), []).append(name)
    out_nodes, layers, matmuls = [], {}, []
    dropped: set[str] = set()
    ambiguous: dict[str, str] = {}
    for node in g.node:
        hit = _weight_of(node, inits, producers)
        names = wanted.get(_digest(hit[0])) if hit is not None else None
        if not names:
            out_nodes.append(node)
            continue
        if len(names) > 1:
            for n in names:
                ambiguous[n] = f"modules {names} have identical weights: their MatMuls cannot be told apart"
            out_nodes.append(node)
            continue
        name = names[0]
        m = modules[name]
        prefix = f"carry.{len(matmuls)}.{name}"
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        y = node.output[0] if bias is None else f"{prefix}.matmul_out"
        nodes, new_inits, mm = _scheme_nodes(m, node.input[0], y, prefix)
        if bias is not None:
            nodes.append(helper.make_node("Add", [y, bias], [node.output[0]], name=f"{prefix}.bias"))
        out_nodes += nodes
        g.initializer.extend(new_inits)
        dropped.update(x for x in hit[1:] if x)
        matmuls.append(mm)
        entry = layers.setdefault(name, {"scheme": m.scheme["format"], "onnx": FORMS[m.scheme["format"]],
                                         "nodes": [], **_exactness(m)})
        entry["nodes"].append(mm)
    del g.node[:]
    g.node.extend(out_nodes)
    _drop_unused(g, dropped)
    if any(n.domain == MS_DOMAIN for n in g.node) and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    missing = {n: ambiguous.get(n, "its weight is not the constant of a MatMul/Gemm in the traced graph (read "
                                    "directly, or folded into another op): kept as its dequantized float weight")
               for n in modules if n not in layers}
    return {"layers": layers, "not_carried": missing, "nodes": matmuls}


def _exactness(m: Any) -> dict:
    fmt = m.scheme["format"]
    if fmt == "int8_weight_only":
        return {"exact": True}
    if fmt == "int4_weight_only":
        return {"exact": True, "accuracy_level": 0,
                "note": "the same int4 values and scales; float activations as in torch"}
    return {"exact": True, "note": "the same integers and scales; products are summed in a different order "
                                   "(float rounding), so an input at a rounding boundary can land one step away"}


def _scheme_nodes(m: Any, x: str, y: str, p: str) -> tuple[list, list, str]:
    """(nodes, initializers, name of the matmul node) computing y = m(x) without its bias."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, arr: Any) -> Any:
        return numpy_helper.from_array(np.asarray(arr), f"{p}.{name}")

    fmt = m.scheme["format"]
    if fmt == "int4_weight_only":
        g = m.group_size
        packed = m.qweight.detach().cpu().numpy().reshape(m.out_features, m.in_features // g, g // 2)
        inits = [const("weight_nbits", packed), const("scales", m.scale.detach().float().cpu().numpy().reshape(-1))]
        nodes, a = [], x
        if m.smooth is not None:
            inits.append(const("awq_smooth", m.smooth.detach().float().cpu().numpy()))
            nodes.append(helper.make_node("Div", [x, f"{p}.awq_smooth"], [f"{p}.x_smoothed"], name=f"{p}.awq"))
            a = f"{p}.x_smoothed"
        nodes.append(helper.make_node("MatMulNBits", [a, f"{p}.weight_nbits", f"{p}.scales"], [y], name=f"{p}.matmul",
                                      domain=MS_DOMAIN, K=m.in_features, N=m.out_features, bits=4, block_size=g,
                                      accuracy_level=0))
        return nodes, inits, f"{p}.matmul"
    q = m.qweight.detach().cpu().numpy()
    inits = [const("weight_int8", np.ascontiguousarray(q.T)), const("weight_scale", m.scale.detach().float().cpu().numpy()),
             const("weight_zero_point", np.zeros(m.out_features, dtype=np.int8))]
    nodes = [helper.make_node("DequantizeLinear", [f"{p}.weight_int8", f"{p}.weight_scale", f"{p}.weight_zero_point"],
                              [f"{p}.weight"], name=f"{p}.weight_dq", axis=1)]
    a = x
    if fmt == "int8_static":
        inits += [const("input_scale", np.float32(float(m.input_scale))),
                  helper.make_tensor(f"{p}.input_zero_point", TensorProto.INT8, [], [0])]
        nodes += [helper.make_node("QuantizeLinear", [x, f"{p}.input_scale", f"{p}.input_zero_point"], [f"{p}.x_q"],
                                   name=f"{p}.input_q"),
                  helper.make_node("DequantizeLinear", [f"{p}.x_q", f"{p}.input_scale", f"{p}.input_zero_point"],
                                   [f"{p}.x_dq"], name=f"{p}.input_dq")]
        a = f"{p}.x_dq"
    elif fmt == "int8_dynamic":  # sx = max(absmax over the last axis / 127, 1e-12); xq = clip(round(x / sx))
        inits += [const("axes", np.array([-1], dtype=np.int64)), const("c127", np.float32(127.0)),
                  const("cm127", np.float32(-127.0)), const("eps", np.float32(1e-12))]
        nodes += [helper.make_node("Abs", [x], [f"{p}.abs"], name=f"{p}.abs"),
                  helper.make_node("ReduceMax", [f"{p}.abs", f"{p}.axes"], [f"{p}.amax"], name=f"{p}.amax", keepdims=1),
                  helper.make_node("Div", [f"{p}.amax", f"{p}.c127"], [f"{p}.sx0"], name=f"{p}.sx0"),
                  helper.make_node("Max", [f"{p}.sx0", f"{p}.eps"], [f"{p}.sx"], name=f"{p}.sx"),
                  helper.make_node("Div", [x, f"{p}.sx"], [f"{p}.xs"], name=f"{p}.xs"),
                  helper.make_node("Round", [f"{p}.xs"], [f"{p}.xr"], name=f"{p}.xr"),
                  helper.make_node("Clip", [f"{p}.xr", f"{p}.cm127", f"{p}.c127"], [f"{p}.xq"], name=f"{p}.xq")]
        mm = f"{p}.matmul"
        nodes += [helper.make_node("MatMul", [f"{p}.xq", f"{p}.weight"], [f"{p}.acc"], name=mm),
                  helper.make_node("Mul", [f"{p}.acc", f"{p}.sx"], [y], name=f"{p}.rescale")]
        return nodes, inits, mm
    elif fmt != "int8_weight_only":
        raise ValueError(f"no ONNX form for quantization scheme {fmt!r}")
    nodes.append(helper.make_node("MatMul", [a, f"{p}.weight"], [y], name=f"{p}.matmul"))
    return nodes, inits, f"{p}.matmul"


def _drop_unused(g: Any, candidates: set[str]) -> None:
    """Remove the replaced weight constants and Transpose nodes nothing reads any more."""
    for _ in range(2):  # a Transpose first, then the initializer it read
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.name in candidates and not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        keep = [t for t in g.initializer if t.name not in candidates or t.name in used]
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)


def carried_summary(per_graph: dict[str, dict]) -> dict:
    """The manifest's `quantization_carry` from each graph's carry report."""
    layers: dict[str, dict] = {}
    not_carried: dict[str, str] = {}
    for graph, rep in per_graph.items():
        for name, info in rep["layers"].items():
            entry = layers.setdefault(name, {k: v for k, v in info.items() if k != "nodes"} | {"graphs": []})
            entry["graphs"].append(graph)
        for name, why in rep["not_carried"].items():
            not_carried.setdefault(name, why)
    rows = {n.partition("[")[0] for n in layers if "[" in n}  # a module whose rows the graph uses instead
    not_carried = {n: w for n, w in not_carried.items() if n not in layers and n not in rows}
    out = {"source": "the torch model's quantized modules (quantization.json)", "layers": layers,
           "not_carried": not_carried, "inexact": {n: e["note"] for n, e in layers.items() if not e["exact"]}}
    if any(e["scheme"] != "int4_weight_only" for e in layers.values()):
        out["runtime_note"] = ORT_NOTE
    return out


# the export precision whose parity bounds fit a carried scheme (export/onnx/config.py explains them)
SCHEME_PRECISION = {"int8_weight_only": "int8-dynamic", "int8_dynamic": "int8-dynamic", "int8_static": "int8-static",
                    "int4_weight_only": "int4-weight"}
# ONNX Runtime's CPU provider fuses DequantizeLinear(int8 weight) + MatMul into an 8-bit MatMulNBits
# that also quantizes its activations (accuracy level 4) unless told otherwise.
ORT_NOTE = ("ONNX Runtime's CPU provider fuses DequantizeLinear(int8 weight)+MatMul into an 8-bit MatMulNBits that "
            "quantizes the activations to int8 (session config 'session.qdq_matmulnbits_accuracy_level', default 4); "
            "'0' keeps float activations as torch computes them")


def carried_tolerance(precision: str, summary: dict | None, defaults: dict,
                      scheme_precision: dict[str, str] = SCHEME_PRECISION) -> Any:
    """The parity bounds of an export whose graph carries torch-quantized layers: the loosest of
    the precision's own and those of every carried scheme (each gate taken at its loosest);
    `scheme_precision` names the format's precision of each scheme."""
    from ..base import Tolerance

    names = [precision] + sorted({scheme_precision[e["scheme"]] for e in (summary or {}).get("layers", {}).values()})
    tols = [defaults[n] for n in names]

    def loosest(key: str, larger_is_looser: bool) -> float | None:
        vals = [getattr(t, key) for t in tols]
        if any(v is None for v in vals):
            return None
        return max(vals) if larger_is_looser else min(vals)

    return Tolerance(max_abs=loosest("max_abs", True), min_cosine=loosest("min_cosine", False),
                     max_action_l1=loosest("max_action_l1", True), min_token_match=loosest("min_token_match", False))
