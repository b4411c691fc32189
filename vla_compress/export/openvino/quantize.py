"""The nncf steps of the OpenVINO export, one function per precision, and the `where:` scope mapped
onto MatMul node names.

Scope: torch.onnx's dynamo exporter records on every ONNX node the module scopes it was traced in
(`pkg.torch.onnx.name_scopes`, outermost first: '', 'vla.backbone', 'vla.backbone.layers.0', ...).
A MatMul/Gemm is in scope when its innermost module is one the `where:` selects (its components'
modules, after include/exclude fnmatch patterns over canonical names such as
`backbone.layers.0.mlp.up_proj`). The OpenVINO converter keeps ONNX node names as friendly names
(sometimes with a `/WithoutBiases`-style suffix), so every MatMul/Convolution of the IR whose name
starts with an out-of-scope ONNX node's name goes into nncf's ignored scope. A graph traced without
those records (not by torch.onnx dynamo) cannot be scoped: a clear error.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...passes.base import Where, matches
from .config import OpenVinoExportConfig

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
OV_WEIGHT_OPS = ("MatMul", "Convolution")


def scoped_module_paths(vla: Any, where: Where) -> tuple[set[str], set[str]]:
    """(module paths in `vla` (named_modules names) that `where` selects, every module path of `vla`)."""
    comps = vla.components()
    wanted = where.components or tuple(comps)
    unknown = [c for c in wanted if c not in comps]
    if unknown:
        raise ConfigError(f"openvino export: where.components: unknown component(s) {unknown}; "
                          f"the model has {', '.join(comps)}")
    path_of = {id(m): n for n, m in vla.named_modules()}
    canonical = {}
    for comp in wanted:
        for rel, m in comps[comp].named_modules():
            canonical[f"{comp}.{rel}" if rel else comp] = m
    for key in ("include", "exclude"):
        for p in getattr(where, key):
            if not any(matches(p, n) for n in canonical):
                raise ConfigError(f"openvino export: where.{key}: pattern {p!r} matches no module in scope "
                                  f"(names look like: {', '.join(list(canonical)[:5])} ...)")
    selected = {n: m for n, m in canonical.items()
                if (not where.include or any(matches(p, n) for p in where.include))
                and not any(matches(p, n) for p in where.exclude)}
    return {path_of[id(m)] for m in selected.values() if id(m) in path_of}, set(path_of.values())


def _module_of(scopes: list[str], modules: set[str]) -> str | None:
    """The innermost of a node's scopes that is a module of the model: the wrapper's prefix
    (`vla.backbone.layers.0` for the model's `backbone.layers.0`) is stripped by trying suffixes."""
    for entry in reversed(scopes):
        parts = entry.split(".")
        for i in range(len(parts)):
            name = ".".join(parts[i:])
            if name in modules:
                return name
    return None


def out_of_scope_nodes(onnx_file: Path, paths: tuple[set[str], set[str]]) -> tuple[list[str], int]:
    """(names of the MatMul/Gemm/Conv nodes of `onnx_file` outside the selected module paths, how many
    such nodes); `paths` is scoped_module_paths' answer."""
    import onnx

    selected, modules = paths
    model = onnx.load(str(onnx_file), load_external_data=False)
    out, total = [], 0
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        total += 1
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPES_KEY not in meta:
            raise ConfigError(f"{onnx_file}: node {node.name} carries no module scopes ({SCOPES_KEY}): this graph "
                              "cannot be scoped with where: (export it with this version's ONNX exporter)")
        if _module_of([s for s in ast.literal_eval(meta[SCOPES_KEY]) if s], modules) not in selected:
            out.append(node.name)
    return out, total


def ignored_scope(model: Any, onnx_names: list[str]) -> Any:
    """nncf.IgnoredScope of the IR ops converted from the ONNX nodes `onnx_names` (None when empty)."""
    import nncf

    if not onnx_names:
        return None
    wanted = set(onnx_names)
    names = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in OV_WEIGHT_OPS
             and op.get_friendly_name().split("/")[0] in wanted]
    return nncf.IgnoredScope(names=names, validate=False) if names else None


# ops that only move or view data between a MatMul and a graph output
VIEW_OPS = ("Gather", "Squeeze", "Unsqueeze", "Reshape", "Slice", "StridedSlice", "Transpose", "Convert")


def output_matmuls(model: Any) -> list[str]:
    """Friendly names of the MatMuls whose result reaches a graph output through view ops only
    (the output projections: an action head's last layer, the bin-logit projection)."""
    out = []
    for result in model.get_results():
        node = result.input_value(0).get_node()
        while node.get_type_name() in VIEW_OPS and node.get_input_size() > 0:
            node = node.input_value(0).get_node()
        if node.get_type_name() == "MatMul":
            out.append(node.get_friendly_name())
    return out


def quantize_ir(model: Any, config: OpenVinoExportConfig, feeds: list[dict] | None, ignored: Any) -> Any:
    """`model` (an openvino.Model converted from fp32 ONNX) at `config.precision`."""
    import nncf

    extra = {"ignored_scope": ignored} if ignored is not None else {}
    p = config.precision
    if p == "fp32":
        return model
    if p == "int8":
        # The output projections stay float. OpenVINO 2026.4's CPU plugin returns the wrong rank when
        # an int8 (FakeQuantize) MatMul feeds the scalar-index Gather that squeezes a token head's last
        # position ((1, B, 256) instead of (B, 256)); they are also the layers whose rounding reaches
        # the actions unaveraged.
        keep = output_matmuls(model)
        if keep:
            names = sorted(set(keep) | set(ignored.names if ignored is not None else ()))
            extra["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
        if not feeds:
            raise ConfigError("openvino int8 export needs calibration observations (pass calibration=[observation, ...])")
        names = [i.get_any_name() for i in model.inputs]
        data = nncf.Dataset(feeds, lambda f: {n: f[n] for n in names})
        return nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds), **extra)
    if p == "int4-weight":
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

        fallback = getattr(nncf.GroupSizeFallbackMode, config.group_size_fallback.upper())
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=config.group_size,
                                     ratio=float(config.ratio), **extra,
                                     advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=fallback))
    if p == "int8-weight":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **extra)
    raise ConfigError(f"no OpenVINO quantizer for precision {p!r}")


def op_summary(model: Any) -> dict[str, int]:
    """Counts of the ops (and low-bit constants) that tell how much of the IR is quantized."""
    counts: Counter = Counter()
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t in ("MatMul", "Convolution", "FakeQuantize"):
            counts[t] += 1
        elif t == "Constant":
            et = op.get_output_element_type(0).get_type_name()
            if et in ("i4", "u4", "i8", "u8"):
                counts[f"Constant[{et}]"] += 1
    return dict(sorted(counts.items()))
