"""What the exporters need of the reference family (models/contracts.py ExportFamily) and its graphs.

ONNX — regression head, one graph "policy_step":
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

GGUF — llama.cpp runs the Llama backbone from the GGUF; the rest of a policy step is ONNX:
"embed": pixel_values, text_ids, text_mask, state -> inputs_embeds (B, L, H), attention_mask (B, L)
    the backbone's whole input sequence as embeddings, built by the model's own `prefix()`:
    <s> [visual tokens] [prompt] [proprio], plus the K learned action queries for a regression
    head. Text and BOS embeddings come from the fp32 embedding table here, so the sequence fed
    to llama.cpp is exactly torch's whatever the GGUF precision; llama.cpp's `token_embd` is used
    only for generated action tokens (tokens head).
"action_head" (regression head only): hidden (B, K, H) -> actions (B, K, A), normalised
    the L1 MLP applied to the backbone's final (normed) hidden states at the query positions,
    which llama.cpp returns in embeddings mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..contracts import (KV, PROCESSOR_VERSION, ArtifactProcessor, ExportFamily, GgufFamily, GraphSpec,
                         bounds_normalization, flat_cache, weight_bytes)


# --- processor, torch reference, head meta ---------------------------------------------------------
class ReferenceArtifactProcessor(ArtifactProcessor):
    """The reference family's processor rebuilt from config.json, tokenizer.json and
    dataset_statistics.json alone (torch is imported for resizing, no model is built)."""

    def __init__(self, root: Path):
        from .adapter import read_processor_files
        from .processor_reference import ReferenceProcessor

        self.cfg, tokenizer, self.action_norm, state_norm, _ = read_processor_files(root)
        self.processor = ReferenceProcessor(self.cfg, tokenizer, state_norm)

    def __call__(self, observations: list[dict]) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.processor(observations).items()}

    def unnormalize(self, chunk: np.ndarray) -> np.ndarray:
        return self.action_norm.unnormalize(chunk)

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.cfg.vision.cameras)

    def observation_template(self) -> dict:
        """A valid all-zero observation for this artifact (every camera at its size, the state)."""
        s = self.cfg.vision.image_size
        return {"images": {cam: np.zeros((s, s, 3), np.uint8) for cam in self.cfg.vision.cameras},
                "state": np.zeros(self.cfg.proprio_dim, np.float32), "instruction": ""}


def _reference_save_processor(vla: Any, root: Path) -> list[str]:
    # Written from the in-memory model, not copied from its source checkpoint: a compression
    # pass may have changed the config (e.g. visual_token_budget) since the checkpoint was read.
    from .adapter import write_processor_files

    return write_processor_files(vla, root)


def _reference_torch_outputs(vla: Any, observations: list[dict]) -> dict[str, np.ndarray]:
    import torch

    x = vla.preprocess(observations)
    args = (x["pixel_values"], x["text_ids"], x["text_mask"], x["state"])
    with torch.inference_mode():
        if vla.cfg.head == "regression":
            return {"actions": vla.forward_regression(*args).float().numpy()}
        bins = vla.generate_action_tokens(*args)
        start = vla.cfg.backbone.vocab_size - vla.cfg.n_bins
        logits = vla.forward_tokens_teacher(*args, action_ids=bins + start)[..., -vla.cfg.n_bins:]
        return {"actions": vla.bins_to_actions(bins).float().numpy(), "bins": bins.numpy(),
                "bin_logits": logits.float().numpy()}


def _reference_head_meta(vla: Any) -> dict:
    c = vla.cfg
    meta = {"family": vla.family, "head": c.head, "chunk_size": c.chunk_size, "action_dim": c.action_dim,
            "num_layers": c.backbone.num_layers}
    if c.head == "tokens":
        meta.update(n_bins=c.n_bins, action_tokens=c.action_tokens, action_token_start=c.backbone.vocab_size - c.n_bins)
    return meta


def _reference_examples(vla: Any, n: int = 2) -> list[dict]:
    """Synthetic observations (for tracing when none are given): random images, two different
    instructions so a batch has left padding, in-range state."""
    rng = np.random.default_rng(0)
    cfg = vla.cfg
    size = cfg.vision.image_size
    texts = ["pick up the object and place it at the goal", "open the door"]
    return [{"images": {cam: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for cam in cfg.vision.cameras},
             "state": rng.uniform(-1, 1, cfg.proprio_dim).astype(np.float32), "instruction": texts[i % 2]}
            for i in range(n)]


# --- ONNX graphs -----------------------------------------------------------------------------------
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
            from ...nn.quantized import take_rows

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


# --- GGUF side graphs ------------------------------------------------------------------------------
def _gguf_modules():
    import torch
    from torch import nn

    class Embed(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vla = vla

        def forward(self, pixel_values, text_ids, text_mask, state):
            embeds, mask = self.vla.prefix(pixel_values, text_ids, text_mask, state)
            if self.vla.cfg.head == "regression":  # the queries follow the proprio token, as in forward_regression
                b, k = embeds.shape[0], self.vla.cfg.chunk_size
                embeds = torch.cat([embeds, self.vla.action_head.queries.unsqueeze(0).expand(b, -1, -1)], dim=1)
                mask = torch.cat([mask, torch.ones(b, k, dtype=mask.dtype, device=mask.device)], dim=1)
            return embeds, mask

    class ActionHead(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.head = vla.action_head

        def forward(self, hidden):
            return self.head(hidden)

    return torch, Embed, ActionHead


def reference_side_graphs(vla: Any, example: dict) -> list[GraphSpec]:
    torch, Embed, ActionHead = _gguf_modules()
    cfg = vla.cfg
    inputs, args, shapes, batch = reference_prefix_inputs(vla, example, "GGUF")
    embed = Embed(vla).eval()
    used = (vla.vision_encoder, vla.projector, vla.proprio_projector, vla.backbone.embed_tokens)
    wbytes = sum(weight_bytes(m) for m in used) + (vla.action_head.queries.nbytes if cfg.head == "regression" else 0)
    specs = [GraphSpec("embed", embed, args, inputs, ["inputs_embeds", "attention_mask"], shapes, wbytes)]
    if cfg.head == "regression":
        head = ActionHead(vla).eval()
        hidden = torch.zeros(args[0].shape[0], cfg.chunk_size, cfg.backbone.hidden_size)
        specs.append(GraphSpec("action_head", head, (hidden,), ["hidden"], ["actions"], {"hidden": {0: batch}},
                               weight_bytes(head)))
    return specs


def reference_backbone(vla: Any) -> tuple[Any, Any]:
    """The Llama and, for a tokens head, its LM head (the action-token logits come from it)."""
    return vla.backbone, (vla.action_head.weight if vla.cfg.head == "tokens" else None)


def reference_vocab(vla: Any) -> tuple[Any, int, int, int | None]:
    t = vla.tokenizer
    return t.tok, t.bos_id, t.eos_id, t.pad_id


def describe_processor(vla: Any) -> dict:
    """The reference processor (processor_reference.py) as data (models/contracts.py PROCESSOR_VERSION)."""
    c = vla.cfg
    s = c.vision.image_size

    def norm(n: Any) -> dict:
        return bounds_normalization(n.low, n.high, n.mask, floor_in=1e-8)

    return {
        "version": PROCESSOR_VERSION,
        "images": {"input": "pixel_values", "cameras": list(c.vision.cameras), "count": len(c.vision.cameras),
                   "frame": "H x W x 3 uint8, RGB, as rendered (no flip or rotation)", "center_crop": None,
                   "branches": [{"height": s, "width": s, "resize": "bilinear, antialiased, only when the frame is "
                                                                 "not height x width (torch F.interpolate)",
                                 "letterbox_fill": None, "scale": 1 / 127.5, "offset": -1.0,
                                 "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}],
                   "layout": "NCHW float32; cameras in order stacked on the channel axis: (B, 3 * cameras, H, W)"},
        "prompt": {"template": c.prompt_template, "instruction": "lower-cased, stripped", "tokenizer": "tokenizer.json",
                   "add_special_tokens": False, "append": [], "bos": None, "padding": "left",
                   "pad_id": int(vla.tokenizer.pad_id), "ids": "text_ids", "mask": "text_mask",
                   "dtype": "int64; mask 1 on tokens, 0 on padding"},
        "state": {"input": "state", "dim": int(c.proprio_dim), "normalization": norm(vla.state_norm)},
        "actions": {"dim": int(c.action_dim), "chunk_size": int(c.chunk_size), "execute": int(c.chunk_size),
                    "normalization": norm(vla.action_norm)},
        "noise": None,
    }


def export_family() -> ExportFamily:
    return ExportFamily(_reference_save_processor, ReferenceArtifactProcessor, _reference_torch_outputs,
                        _reference_head_meta, _reference_examples, onnx_graphs=reference_graphs,
                        gguf=GgufFamily(reference_side_graphs, reference_backbone, reference_vocab),
                        describe=describe_processor)
