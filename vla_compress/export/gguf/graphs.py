"""The ONNX side graphs of a GGUF artifact: what llama.cpp cannot run.

llama.cpp runs the Llama backbone from the GGUF; everything else in a policy step is ONNX:

"embed": pixel_values, text_ids, text_mask, state -> inputs_embeds (B, L, H), attention_mask (B, L)
    the backbone's whole input sequence as embeddings, built by the model's own `prefix()`:
    <s> [visual tokens] [prompt] [proprio], plus the K learned action queries for a regression
    head. Text and BOS embeddings come from the fp32 embedding table here, so the sequence fed
    to llama.cpp is exactly torch's whatever the GGUF precision; llama.cpp's `token_embd` is used
    only for generated action tokens (tokens head).
"action_head" (regression head only): hidden (B, K, H) -> actions (B, K, A), normalised
    the L1 MLP applied to the backbone's final (normed) hidden states at the query positions,
    which llama.cpp returns in embeddings mode.

The wrappers are traced with the ONNX exporter's machinery (GraphSpec, dynamic shapes, checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ...errors import ConfigError
from ..onnx.graphs import GraphSpec, reference_prefix_inputs, weight_bytes

if TYPE_CHECKING:  # pragma: no cover
    from .writer import GgufVocab


@dataclass(frozen=True)
class GgufFamily:
    """What a family gives the GGUF exporter: its side graphs, its Llama and its vocabulary."""

    side_graphs: Callable[[Any, dict], list[GraphSpec]]  # (vla, preprocessed example batch) -> specs
    backbone: Callable[[Any], tuple[Any, Any]]  # vla -> (HF LlamaModel, LM head weight or None)
    vocab: Callable[[Any], "GgufVocab"]


_FAMILIES: dict[str, GgufFamily] = {}


def register_gguf_family(name: str, family: GgufFamily) -> None:
    _FAMILIES[name] = family


def get_gguf_family(name: str) -> GgufFamily:
    if name not in _FAMILIES:
        raise ConfigError(f"GGUF export does not support model family {name!r} yet (no vision/head graphs for it); "
                          f"supported: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def _reference_modules():
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
    torch, Embed, ActionHead = _reference_modules()
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


def reference_vocab(vla: Any) -> "GgufVocab":
    from .writer import vocab_from_tokenizer

    t = vla.tokenizer
    return vocab_from_tokenizer(t.tok, t.bos_id, t.eos_id, t.pad_id)


register_gguf_family("reference", GgufFamily(reference_side_graphs, reference_backbone, reference_vocab))
