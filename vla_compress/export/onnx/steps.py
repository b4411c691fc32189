"""The ONNX steps other exporters reuse: trace one graph (carrying torch-quantized Linears), check
it, read its I/O signature, and compute static-calibration feeds by running the fp32 graphs.

The ONNX exporter is built from these; the GGUF exporter traces its side graphs with them and the
TensorRT exporter calibrates its Q/DQ graphs with them. torch/onnx are imported inside each step.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..base import ExportError

NOT_CARRIED = "carry_quantization is off: traced as its dequantized float weight"


def shapes_by_arg(spec: Any) -> dict:
    """dynamic_shapes keyed by the wrapper's forward() parameter names, in order."""
    params = list(inspect.signature(spec.module.forward).parameters)
    names = list(spec.dynamic_shapes)
    if len(params) != len(names):
        raise ExportError(spec.name, f"dynamic_shapes names {names} do not match forward{tuple(params)}")
    return {p: spec.dynamic_shapes[n] for p, n in zip(params, names)}


def trace_graph(spec: Any, file: Path, opset: int, vla: Any, carry: bool, external: bool | None) -> dict | None:
    """Trace one graph spec into `file` with torch.onnx's dynamo exporter. Torch-quantized Linears
    are traced as their dequantized float weights, then (`carry`) rewritten into their scheme's ONNX
    form (onnx/carry.py). `external`: weights in a `.data` file beside it (None: torch decides).
    Returns the carry report, or None when the graph holds no quantized module."""
    import onnx
    import torch

    from .carry import carry_quantization, float_stand_ins
    from .quantize import save_model

    with warnings.catch_warnings(), torch.no_grad(), float_stand_ins(spec.module, vla) as quantized:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(spec.module, spec.args, None, dynamo=True, opset_version=opset,
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    dynamic_shapes=shapes_by_arg(spec), verbose=False, optimize=True)
    program.save(str(file), external_data=external)
    if quantized and carry:
        model = onnx.load(str(file))
        report = carry_quantization(model, quantized)
        with contextlib.chdir(file.parent):
            save_model(model, file, bool(external))
        return report
    if quantized:  # asked not to carry: the dequantized weights are what the precision re-quantizes
        return {"layers": {}, "nodes": [], "not_carried": {n: NOT_CARRIED for n in quantized}}
    return None


def check_graph_file(path: Path, onnxruntime_ops: bool = False) -> None:
    """onnx.checker on a saved graph, as an ExportError naming the file. `onnxruntime_ops`: the
    graph holds ONNX Runtime's contrib ops (optimize "ort"), which onnx.checker has no schema for:
    ONNX Runtime itself loads it instead (graph optimisations off, so what it checks is the file)."""
    import onnx

    try:
        if not onnxruntime_ops:
            onnx.checker.check_model(str(path))
            return
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (ORT raises its own exception types from C++)
        which = "ONNX Runtime" if onnxruntime_ops else "onnx.checker"
        raise ExportError(path, f"{which} rejected the model: {str(e).strip()[:400]}") from None


def io_signature(path: Path) -> dict:
    """Input/output names, element types and shapes (symbolic axes by name) of a graph."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                        "shape": [d.dim_param or d.dim_value for d in t.shape.dim]})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def calibration_feeds(vla: Any, family: Any, work: Path, graphs: dict[str, tuple[Path, int]],
                      observations: list[dict], threads: int) -> dict[str, list[dict]]:
    """Per-graph input feeds for static calibration: the processor's inputs of the first graph and,
    for a graph run in a loop (a tokens head's decode, a flow head's denoise step), the inputs the
    fp32 graphs' own loop feeds it on the observations (the KV caches and x_t it will really see)."""
    from ...runtime.onnxruntime_policy import OnnxGraphs, loop_graphs

    family.save_processor(vla, work)
    processor = family.load_processor(work)
    meta = family.head_meta(vla)
    (src_dir,) = {src.parent for src, _ in graphs.values()}
    fp32 = Artifact(src_dir, {"model": meta, "graphs": {n: {"file": src.name} for n, (src, _) in graphs.items()}})
    runner = OnnxGraphs(fp32, threads=threads, providers=["CPUExecutionProvider"])
    first, looped = loop_graphs(meta)
    feeds: dict[str, list[dict]] = {first: []}
    if looped is not None:
        feeds[looped] = []
        runner.decode_feeds = feeds[looped]
    for obs in observations:
        f = processor([obs])
        feeds[first].append({i.name: f[i.name] for i in runner.sessions[first].get_inputs()})
        if looped is not None:
            runner.predict(f)
    return feeds
