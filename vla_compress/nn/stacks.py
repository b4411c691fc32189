"""A prunable transformer layer stack, as a family describes it (models/<family>/prune_<family>.py),
so the layer-drop and width-prune transforms (passes/prune/) and the pruned-shape restore on load
are the same code for every family.

A `Stack` says, for one transformer layer stack of one component:
  - where the ModuleList is (`owner.attr`) and its canonical layer prefix (backbone.layers, ...);
  - the head width, the attention layout (separate q/k/v/o, or timm's fused `qkv` + `proj`), whether
    KV heads are separate (GQA) and whether they may be removed at all;
  - the MLP layout (gated gate/up/down, or fc1/fc2). timm LayerScale (`ls1`/`ls2`) scales the
    residual width and is never touched: pruning keeps the residual width;
  - which layers run in a policy step (`active`: OpenVLA reads the second-to-last ViT block, so the
    last block never runs; `width_active`: SmolVLA's last VLM layer only produces keys/values);
  - the residual stream "boundaries" used to score layers (input of every active layer, then the
    stream after the last one);
  - the stack whose layers are dropped together with it (SmolVLA's action expert) and the block
    size that keeps an interleaving consistent.

Torch-free: the stack only holds references to the family's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stack:
    """One prunable layer stack (see the module docstring)."""

    name: str  # key in notes and in per-layer size records: "backbone", "vision_encoder.featurizer"
    component: str
    prefix: str  # canonical name of the layer list: backbone.layers
    owner: Any  # the module holding the ModuleList
    attr: str  # its attribute name on `owner`
    head_dim: int
    base: tuple[int, int, int]  # (heads, kv heads, MLP width) the family's config builds by default
    attn: str = "self_attn"  # attention module of a layer
    fused_qkv: bool = False  # timm: qkv = [q | k | v] rows, proj
    out_proj: str = "o_proj"
    gated_mlp: bool = True  # gate/up/down (else fc1/fc2)
    has_kv: bool = True  # separate KV heads (GQA)
    kv_locked: str = ""  # why KV heads may not be removed ("" = they may)
    active: int = -1  # layers[:active] run (-1: all)
    width_active: int = -1  # layers[:width_active] run their output projection and MLP (-1: = active)
    entry: str = "input_layernorm"  # module of a layer whose input is the layer's input
    exit: tuple[Any, str] | None = None  # (module, "pre" | "out"): the stream after the last active layer
    bias: bool = False
    drop_with: "Stack | None" = None  # layers dropped together with this stack's (same indices)
    drop_block: int = 1  # layers are dropped in aligned blocks of this many
    score_on: "Stack | None" = None  # the stack whose residual stream scores a layer drop (default: self)
    no_drop: str = ""  # why this stack's layers may not be dropped on their own
    extra: dict = field(default_factory=dict)

    @property
    def layers(self) -> Any:
        return getattr(self.owner, self.attr)

    def n_active(self) -> int:
        return len(self.layers) if self.active < 0 else self.active

    def n_width_active(self) -> int:
        return self.n_active() if self.width_active < 0 else self.width_active

    def attention(self, layer: Any) -> Any:
        return getattr(layer, self.attn)

    def out_projection(self, layer: Any) -> Any:
        return getattr(self.attention(layer), self.out_proj)

    def down_projection(self, layer: Any) -> Any:
        return layer.mlp.down_proj if self.gated_mlp else layer.mlp.fc2

    def taps(self) -> list[tuple[Any, str]]:
        """(module, "pre"|"out") of every boundary of the residual stream: the input of each active
        layer, then the stream after the last active layer."""
        n = self.n_active()
        out = [(getattr(self.layers[i], self.entry), "pre") for i in range(n)]
        out.append(self.exit if self.exit is not None else (self.layers[n - 1], "out"))
        return out

    def sizes(self) -> list[tuple[int, int, int]]:
        """(query heads, KV heads, MLP width) of every layer, read from the modules."""
        hd, out = self.head_dim, []
        for layer in self.layers:
            a = self.attention(layer)
            if self.fused_qkv:
                h = a.qkv.out_features // 3 // hd
                out.append((h, h, layer.mlp.fc1.out_features))
            else:
                h = a.q_proj.out_features // hd
                kv = a.k_proj.out_features // hd if self.has_kv else h
                out.append((h, kv, (layer.mlp.gate_proj if self.gated_mlp else layer.mlp.fc1).out_features))
        return out


def sizes_entry(stack: Stack, sizes: list[tuple[int, int, int]]) -> list[list[int]] | None:
    """Per-layer sizes to record for `stack`, or None when every layer has the family's base shape."""
    return None if all(s == stack.base for s in sizes) else [list(s) for s in sizes]


def fix_llama(model: Any, n: int) -> None:
    """HF LlamaModel runs layers[:num_hidden_layers]; layer_idx is each layer's KV-cache slot."""
    model.config.num_hidden_layers = n
    for i, layer in enumerate(model.layers):
        layer.self_attn.layer_idx = i
