"""Configs of the structured-pruning passes (no torch here; the transforms are in layers.py/width.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import CALIBRATION, PassConfig
from ..registry import register_pass

_PRUNABLE = ("backbone", "vision_encoder", "action_head")  # action_head: SmolVLA's expert layers


@dataclass(frozen=True)
class LayerDropConfig(PassConfig):
    """Remove whole transformer layers, least important first (ShortGPT / angular distance).

    metric "block_influence": ShortGPT's BI_i = 1 - mean cos(h_in, h_out) of layer i over calibration
    tokens; the `num_layers` lowest-BI layers go. metric "angular": Gromov et al.'s
    arccos(cos(h_l, h_{l+n}))/pi; the contiguous block of n layers with the smallest distance goes.
    Give `num_layers` (per component) or `ratio` (fraction of each component's layers).
    `where.include` patterns (backbone.layers.3, ...) restrict which layers may be dropped.
    SmolVLA: backbone layers go in aligned blocks of `self_attn_every_n_layers` together with their
    action-expert layers (num_layers must be a multiple of the block); the expert's layers alone
    cannot be dropped. OpenVLA's vision_encoder holds two ViTs: each drops `num_layers`.
    """

    name = "layer-drop"
    default_components = ("backbone",)
    supported_components = _PRUNABLE

    num_layers: int = 0
    ratio: float = 0.0
    metric: str = "block_influence"

    def validate(self) -> None:
        self.check_range("num_layers", 0, 10**6)
        self.check_range("ratio", 0.0, 1.0, hi_open=True)
        if (self.num_layers > 0) == (self.ratio > 0):
            raise self.error("num_layers", "give exactly one of num_layers (> 0) or ratio (in (0, 1))")
        self.check_choice("metric", ("block_influence", "angular"))

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION})


@dataclass(frozen=True)
class WidthPruneConfig(PassConfig):
    """Remove attention heads and MLP channels, keeping every layer (a narrower dense model).

    importance "wanda": Wanda's |W_ij| * ||X_j|| summed over the output projection's rows (o_proj /
    out_proj for heads, down_proj / fc2 for channels), ||X_j|| over calibration tokens;
    "magnitude": the same without the activation term (no data needed).
    gqa (backbone): "kv_groups" removes whole KV groups (a KV head and its query heads);
    "query_heads" removes the same number of query heads from every group (KV heads stay).
    allocation: "uniform" removes the same number from every layer (config keeps scalar sizes);
    "global" ranks heads/channels across layers by their score relative to the layer's mean (each
    layer keeps at least one head and `round_to` channels; sizes are recorded per layer).
    round_to: kept MLP widths are multiples of this (e.g. 32 for int4 groups, 256 for K-quants).
    `where.include` / `exclude` patterns on layers (backbone.layers.1, ...) limit which layers shrink.
    SmolVLA's backbone and action_head keep their KV heads (the expert reads the VLM's keys/values):
    use gqa "query_heads" there.
    """

    name = "width-prune"
    default_components = ("backbone",)
    supported_components = _PRUNABLE

    heads_ratio: float = 0.0
    mlp_ratio: float = 0.0
    gqa: str = "kv_groups"
    allocation: str = "uniform"
    importance: str = "wanda"
    round_to: int = 1

    def validate(self) -> None:
        self.check_range("heads_ratio", 0.0, 1.0, hi_open=True)
        self.check_range("mlp_ratio", 0.0, 1.0, hi_open=True)
        if self.heads_ratio == 0 and self.mlp_ratio == 0:
            raise self.error("heads_ratio", "nothing to prune: set heads_ratio and/or mlp_ratio in (0, 1)")
        self.check_choice("gqa", ("kv_groups", "query_heads"))
        self.check_choice("allocation", ("uniform", "global"))
        self.check_choice("importance", ("wanda", "magnitude"))
        self.check_range("round_to", 1, 4096)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION}) if self.importance == "wanda" else frozenset()


register_pass(LayerDropConfig, "vla_compress.passes.prune.layers:drop_layers", needs="prune")
register_pass(WidthPruneConfig, "vla_compress.passes.prune.width:prune_width", needs="prune")
