"""The ONNX graphs of a policy step, as small wrapper modules around the unchanged model.

Regression head — one graph, "policy_step":
    pixel_values, text_ids, text_mask, state -> actions (B, K, A), normalised.
Tokens head — two graphs with optimum's decoder-with-past naming:
    "prefill": pixel_values, text_ids, text_mask, state
        -> bin_logits (B, n_bins) at the last position, attention_mask (B, L) of the prefix,
           present.{i}.key / present.{i}.value (B, kv_heads, L, head_dim)
    "decode":  token_ids (B, 1) vocabulary ids, attention_mask (B, past + 1), position_ids (B, 1),
               past_key_values.{i}.key / .value (B, kv_heads, past, head_dim)
        -> bin_logits, present.{i}.key / .value (B, kv_heads, past + 1, head_dim)
The prefill returns its attention mask so the decode loop needs no knowledge of the prefix
layout (visual tokens, padding, proprio token): it appends a 1 per generated token, and the
next position is the count of real tokens so far (the model's own position rule).

Dynamic axes: batch and text length; past length for decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import ConfigError

KV = ("key", "value")


@dataclass
class GraphSpec:
    """One graph to trace: the wrapper module, example inputs and the ONNX I/O contract."""

    name: str
    module: Any  # torch.nn.Module
    args: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: dict
    weight_bytes: int = 0
    extra: dict = field(default_factory=dict)


_GRAPHS: dict[str, Callable[[Any, dict], list[GraphSpec]]] = {}


def register_graphs(family: str):
    def deco(fn: Callable[[Any, dict], list[GraphSpec]]) -> Callable[[Any, dict], list[GraphSpec]]:
        _GRAPHS[family] = fn
        return fn

    return deco


def build_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    """The graphs for `vla`, traced with `example` (preprocessed inputs, batch >= 2)."""
    family = getattr(vla, "family", "")
    if family not in _GRAPHS:
        raise ConfigError(f"ONNX export does not support model family {family!r} yet; supported: {', '.join(sorted(_GRAPHS))}")
    return _GRAPHS[family](vla, example)


def weight_bytes(module: Any) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def flat_cache(cache: Any) -> list:
    """A transformers Cache as [layer0 keys, layer0 values, layer1 keys, ...] (the present.* outputs)."""
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


# --- reference family -------------------------------------------------------------------------
def _reference_modules():
    """Wrapper classes, defined lazily so importing this module does not import torch."""
    import torch
    from torch import nn
    from transformers import DynamicCache

    def bin_head(vla) -> nn.Linear:
        # The 256 action rows of the LM head as their own Linear: the graph then holds a plain
        # (n_bins x hidden) weight that quantizers see as a MatMul weight, instead of a slice of
        # the full vocabulary head computed at run time.
        n = vla.cfg.n_bins
        if getattr(vla.action_head, "is_quantized", False):  # torch-quantized: the same rows, still quantized
            from ...passes.quantize.modules import take_rows

            return take_rows(vla.action_head, -n)
        head = nn.Linear(vla.cfg.backbone.hidden_size, n, bias=False)
        head.weight = nn.Parameter(vla.action_head.weight[-n:].detach().clone(), requires_grad=False)
        return head

    class PolicyStep(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, text_ids, text_mask, state):
            return self.vla.forward_regression(pixel_values, text_ids, text_mask, state)

    class Prefill(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla, self.bin_head = vla, bin_head(vla)

        def forward(self, pixel_values, text_ids, text_mask, state):
            embeds, mask = self.vla.prefix(pixel_values, text_ids, text_mask, state)
            hidden, past = self.vla.run_backbone(embeds, mask, past=DynamicCache(), use_cache=True)
            # hidden[:, -1:] keeps the row 3-D so the head is a MatMul (int4 covers MatMul, not Gemm)
            return (self.bin_head(hidden[:, -1:])[:, 0], mask, *flat_cache(past))

    class Decode(nn.Module):
        def __init__(self, vla, head):
            super().__init__()
            self.vla, self.bin_head = vla, head

        def forward(self, token_ids, attention_mask, position_ids, past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
            embeds = self.vla.backbone.embed_tokens(token_ids)
            hidden, present = self.vla.run_backbone(embeds, attention_mask, past=cache, position_ids=position_ids,
                                                    use_cache=True)
            return (self.bin_head(hidden[:, -1:])[:, 0], *flat_cache(present))

    return torch, PolicyStep, Prefill, Decode


def reference_prefix_inputs(vla: Any, example: dict, fmt: str) -> tuple[list[str], tuple, dict, Any]:
    """The reference family's observation inputs for tracing: names, example tensors, dynamic shapes
    (batch and text length) and the batch Dim. A batch of 1 would be baked into the graph."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    text = Dim("text", min=1, max=vla.cfg.backbone.max_position)
    inputs = ["pixel_values", "text_ids", "text_mask", "state"]
    args = tuple(example[k] for k in inputs)
    if args[0].shape[0] < 2:
        raise ConfigError(f"{fmt} export needs an example batch of >= 2 observations (batch 1 would be baked in)")
    shapes = {"pixel_values": {0: batch}, "text_ids": {0: batch, 1: text}, "text_mask": {0: batch, 1: text},
              "state": {0: batch}}
    return inputs, args, shapes, batch


@register_graphs("reference")
def reference_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    torch, PolicyStep, Prefill, Decode = _reference_modules()
    cfg = vla.cfg
    inputs, args, prefix_shapes, batch = reference_prefix_inputs(vla, example, "ONNX")
    if cfg.head == "regression":
        step = PolicyStep(vla).eval()
        return [GraphSpec("policy_step", step, args, inputs, ["actions"], prefix_shapes, weight_bytes(step))]

    n_layers = cfg.backbone.num_layers
    present = [f"present.{i}.{kv}" for i in range(n_layers) for kv in KV]
    prefill = Prefill(vla).eval()
    with torch.no_grad():
        out = prefill(*args)
    # example decode inputs: the first greedy token after the example prefix
    start = cfg.backbone.vocab_size - cfg.n_bins
    mask = torch.cat([out[1], torch.ones_like(out[1][:, :1])], dim=1)
    dec_args = ((out[0].argmax(-1, keepdim=True) + start), mask, out[1].sum(-1, keepdim=True), tuple(out[2:]))
    from torch.export import Dim

    past_len = Dim("past", min=1, max=cfg.backbone.max_position)
    decode = Decode(vla, prefill.bin_head).eval()
    dec_shapes = {"token_ids": {0: batch}, "attention_mask": {0: batch, 1: past_len + 1}, "position_ids": {0: batch},
                  "past": tuple({0: batch, 2: past_len} for _ in range(2 * n_layers))}
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in KV]
    return [
        GraphSpec("prefill", prefill, args, inputs, ["bin_logits", "attention_mask", *present], prefix_shapes,
                  weight_bytes(prefill)),
        GraphSpec("decode", decode, dec_args, ["token_ids", "attention_mask", "position_ids", *past_names],
                  ["bin_logits", *present], dec_shapes, weight_bytes(decode)),
    ]
