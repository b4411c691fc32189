"""Optimization profiles: (min, opt, max) shapes of every graph input, from the symbolic axes the
ONNX artifact recorded in artifact.json (`io`), e.g. ["batch", "text"] or ["batch", 2, "past", 16].

Axis ranges: batch and text come from the config; a tokens head's KV-cache axis "past" spans
the prefix lengths the prefill produces (its attention_mask output is ["batch", "text + 18"],
evaluated at the text range) up to the prefix plus all but the last action token. A flow head's
keys/values axis (its `loop` record's `prefix_axis`, e.g. "prefix") is the prefix length the
prefix graph produces, at the text range (the denoise step never grows it). Dims may be
expressions of axes ("past + 1"); they are evaluated with + - * // on integers only.
"""

from __future__ import annotations

import ast
import operator

from ...errors import ConfigError
from .config import TensorRTExportConfig

Range = tuple[int, int, int]  # (min, opt, max)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def eval_dim(dim: int | str, values: dict[str, int]) -> int:
    """A dim of the recorded io (an int, an axis name or an expression of axis names) at `values`."""
    if isinstance(dim, int):
        return dim
    try:
        tree = ast.parse(str(dim), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"cannot read the dynamic dim {dim!r} of the ONNX io") from None

    def ev(node) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise ConfigError(f"dynamic axis {node.id!r} (in dim {dim!r}) has no range in the TensorRT profile; "
                                  f"known axes: {', '.join(sorted(values))}")
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ConfigError(f"unsupported expression in the dynamic dim {dim!r} of the ONNX io")

    return ev(tree)


def axis_ranges(config: TensorRTExportConfig, manifest: dict) -> dict[str, Range]:
    """(min, opt, max) of each named axis for an ONNX artifact's manifest (`io` and `model`)."""
    ranges: dict[str, Range] = {"batch": (1, config.opt_batch, config.max_batch),
                                "text": (1, config.opt_text, config.max_text)}
    io = manifest["io"]
    if "prefill" in io:
        mask = next((o for o in io["prefill"]["outputs"] if o["name"] == "attention_mask"), None)
        if mask is None:
            raise ConfigError("the prefill graph has no attention_mask output to size the KV cache from")
        lo, opt, hi = (eval_dim(mask["shape"][1], {"batch": b, "text": t})
                       for b, t in zip(ranges["batch"], ranges["text"]))
        n = int(manifest["model"]["action_tokens"])
        # decode step i (0-based) sees a past of prefix + i tokens, i < n - 1
        ranges["past"] = (lo, opt + (n - 1) // 2, hi + max(n - 2, 0))
    loop = manifest["model"].get("loop") if manifest["model"].get("head") == "flow" else None
    if loop is not None:
        axis = loop["prefix_axis"]
        out = next((o for o in io.get(loop["prefix"], {}).get("outputs", []) if o["name"] == axis["output"]), None)
        if out is None:
            raise ConfigError(f"the {loop['prefix']!r} graph has no {axis['output']!r} output to size the "
                              f"{axis['name']!r} axis of the keys/values from")
        ranges[axis["name"]] = tuple(eval_dim(out["shape"][axis["dim"]], {"batch": b, "text": t})
                                     for b, t in zip(ranges["batch"], ranges["text"]))
    return ranges


def graph_profile(inputs: list[dict], ranges: dict[str, Range]) -> dict[str, dict[str, list[int]]]:
    """{input name: {"min": shape, "opt": shape, "max": shape}} for one graph's recorded inputs."""
    out = {}
    for v in inputs:
        shapes = {}
        for k, key in enumerate(("min", "opt", "max")):
            values = {axis: r[k] for axis, r in ranges.items()}
            shapes[key] = [eval_dim(d, values) for d in v["shape"]]
        if any(d < 1 for s in shapes.values() for d in s):
            raise ConfigError(f"input {v['name']}: profile shapes {shapes} have an axis < 1")
        out[v["name"]] = shapes
    return out
