"""Per-family pruning layout: where each prunable layer stack is and how its layers are built, so the
layer-drop and width-prune transforms are the same code for every family.

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
  - for SmolVLA, the stack whose layers are dropped together with it (the action expert) and the
    block size that keeps its self/cross-attention interleaving consistent.

Families:
  reference     backbone (HF Llama, GQA), vision_encoder (HF SigLIP)
  openvla(-oft) backbone (HF Llama in language_model.model), vision_encoder.featurizer (DINOv2) and
                vision_encoder.fused_featurizer (SigLIP): timm blocks with fused qkv
  smolvla       vision_encoder (SigLIP), backbone (VLM text layers), action_head (expert layers).
                The expert attends to the VLM's per-layer keys/values: self-attention layers
                concatenate them with the expert's own (same KV heads), cross-attention layers read
                them as k_proj/v_proj inputs. So KV heads of neither stack may be removed (query heads
                and MLP channels may), and VLM layers are dropped only together with the expert layers
                paired with them, in aligned blocks of `self_attn_every_n_layers` layers (one self-
                and one cross-attention layer for SmolVLA-base) so the interleaving stays as built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import PassError

SUPPORTED_FAMILIES = ("reference", "openvla", "openvla-oft", "smolvla")


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


def _reference(vla: Any) -> list[Stack]:
    b, v = vla.cfg.backbone, vla.cfg.vision
    ve = vla.vision_encoder
    return [Stack("backbone", "backbone", "backbone.layers", vla.backbone, "layers", b.attention_head_dim,
                  (b.num_heads, b.num_kv_heads, b.intermediate_size)),
            Stack("vision_encoder", "vision_encoder", "vision_encoder.encoder.layers", ve.encoder, "layers",
                  v.attention_head_dim, (v.num_heads, v.num_heads, v.intermediate_size), out_proj="out_proj",
                  gated_mlp=False, has_kv=False, entry="layer_norm1", bias=True)]


def _openvla(vla: Any) -> list[Stack]:
    lm = vla.language_model.model
    c = vla.cfg.llama
    hd = int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
    out = [Stack("backbone", "backbone", "backbone.layers", lm, "layers", hd,
                 (int(c["num_attention_heads"]), int(c["num_key_value_heads"]), int(c["intermediate_size"])),
                 exit=(lm.norm, "pre"), bias=bool(c.get("attention_bias")))]
    vb = vla.vision_backbone
    for i, branch in enumerate(("featurizer", "fused_featurizer")):
        vit = getattr(vb, branch, None)
        if vit is None:
            continue
        s = vit.spec
        out.append(Stack(f"vision_encoder.{branch}", "vision_encoder", f"vision_encoder.{branch}.blocks", vit,
                         "blocks", s.embed_dim // s.num_heads, (s.num_heads, s.num_heads, s.mlp_dim), attn="attn",
                         fused_qkv=True, out_proj="proj", gated_mlp=False, has_kv=False,
                         active=s.feature_layer + 1, entry="norm1", bias=True, extra={"branch": i}))
    return out


def _smolvla(vla: Any) -> list[Stack]:
    arch = vla.arch
    t, v = arch.vlm.text, arch.vlm.vision
    expert = vla.action_head.lm_expert
    locked = ("SmolVLA's action expert reads the VLM's keys/values at every layer (concatenated in its "
              "self-attention layers, as k/v inputs in its cross-attention layers): KV heads cannot be "
              "removed; use gqa: query_heads")
    one_to_one = arch.expert_layers == arch.vlm_layers
    n = arch.policy.self_attn_every_n_layers
    block = n if arch.cross and n > 0 else 1
    head = Stack("action_head", "action_head", "action_head.lm_expert.layers", expert, "layers", t.head_dim,
                 (t.num_heads, t.num_kv_heads, arch.expert_intermediate), kv_locked=locked,
                 exit=(expert.norm, "pre"), bias=t.attention_bias,
                 no_drop="SmolVLA's action-expert layers are dropped only together with the VLM layers they "
                         "attend to: use where: backbone")
    backbone = Stack("backbone", "backbone", "backbone.layers", vla.backbone, "layers", t.head_dim,
                     (t.num_heads, t.num_kv_heads, t.intermediate_size), kv_locked=locked,
                     width_active=len(vla.backbone.layers) - 1, bias=t.attention_bias,
                     drop_with=head, drop_block=block, score_on=head,
                     no_drop="" if one_to_one else
                     f"SmolVLA with {arch.expert_layers} expert layers for {arch.vlm_layers} VLM layers: layer-drop "
                     "needs one expert layer per VLM layer")
    vision = Stack("vision_encoder", "vision_encoder", "vision_encoder.encoder.layers", vla.vision_encoder.encoder,
                   "layers", v.hidden_size // v.num_heads, (v.num_heads, v.num_heads, v.intermediate_size),
                   out_proj="out_proj", gated_mlp=False, has_kv=False, entry="layer_norm1", bias=True)
    return [vision, backbone, head]


_LAYOUTS = {"reference": _reference, "openvla": _openvla, "openvla-oft": _openvla, "smolvla": _smolvla}


def family_stacks(vla: Any) -> list[Stack]:
    """Every prunable layer stack of `vla` (an error for a family without a layout)."""
    family = getattr(vla, "family", "")
    if family not in _LAYOUTS:
        raise PassError(f"structured pruning has no layout for family {family!r} "
                        f"(supported: {', '.join(SUPPORTED_FAMILIES)})")
    return _LAYOUTS[family](vla)


def stacks_for(vla: Any, component: str) -> list[Stack]:
    """The prunable layer stacks of one component (an error when it has none)."""
    stacks = family_stacks(vla)
    out = [s for s in stacks if s.component == component]
    if not out:
        have = sorted({s.component for s in stacks})
        raise PassError(f"component {component!r} of the {vla.family} family has no prunable layer stack "
                        f"(prunable: {', '.join(have)})")
    return out


def layer_names(stack: Stack, limit: int | None = None) -> dict[str, Any]:
    """Canonical name -> layer for the first `limit` (default: active) layers of a stack."""
    n = stack.n_active() if limit is None else limit
    return {f"{stack.prefix}.{i}": stack.layers[i] for i in range(n)}


def scoped_layers(vla: Any, config: Any, width: bool = False) -> list[tuple[Stack, list[int]]]:
    """The stacks of the components in scope with the indices of their layers that `where.include` /
    `exclude` select (each pattern must match a layer of some stack; stacks with none are left out).
    Only layers that run in a policy step are candidates (with `width`: that run their output
    projection and MLP)."""
    from ..base import scoped_components, scoped_modules

    stacks = [s for comp in scoped_components(vla, config) for s in stacks_for(vla, comp)]
    names: dict[str, Any] = {}
    for s in stacks:
        names.update(layer_names(s, s.n_width_active() if width else None))
    selected = scoped_modules(vla, config, candidates=names)
    out = []
    for s in stacks:
        idx = sorted(int(k.rsplit(".", 1)[1]) for k in selected if k.rsplit(".", 1)[0] == s.prefix)
        if idx:
            out.append((s, idx))
    if not out:
        raise config.error("where", "no layer is in scope")
    return out
