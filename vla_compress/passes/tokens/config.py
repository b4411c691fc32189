"""Configs of the visual-token passes (no torch here; transforms in fastv.py / tome.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import CALIBRATION, PassConfig
from ..registry import register_pass


@dataclass(frozen=True)
class VisualTokenPruneConfig(PassConfig):
    """Keep a fixed set of visual tokens, chosen by the attention they receive (FastV-style).

    At backbone layer `layer` (FastV: K = 2), the attention from the non-visual positions (prompt,
    proprio and action queries) to each visual token is averaged over heads, query positions and
    calibration observations; the `budget` best tokens (or `keep_ratio` of them) are kept, in their
    original order, for every observation: static shapes, stored in the model's `visual_keep`
    buffer (and, reference family, the `visual_token_budget` config; OpenVLA / OFT / SmolVLA:
    token_reduction.json beside the weights), so it survives save/load and export.
    """

    name = "visual-token-prune"
    supported_components = ("backbone",)
    keep_ratio: float = 0.5
    budget: int = 0  # > 0: keep exactly this many tokens (overrides keep_ratio)
    layer: int = 2

    def validate(self) -> None:
        self.check_range("keep_ratio", 0.0, 1.0, lo_open=True)
        self.check_range("budget", 0, 10**6)
        self.check_range("layer", 0, 10**4)

    def needs(self) -> frozenset[str]:
        return frozenset({CALIBRATION})


@dataclass(frozen=True)
class TokenMergeConfig(PassConfig):
    """ToMe (Bolya et al. 2023): after every vision-encoder layer, merge the `r` most similar token
    pairs (bipartite soft matching on the attention keys), with proportional attention.

    mode "unmerge": merged tokens are copied back to every patch they cover at the encoder output,
    so the patch grid (and the projector's 2x2 pixel-unshuffle) is intact: the encoder gets cheaper,
    the backbone sees as many tokens as before. mode "reduce": the merged tokens go on to the
    backbone (only without a pixel-unshuffle merge, token_merge = 1, and without a visual keep set):
    the backbone sees num_patches - layers * r visual tokens. Give `r` or `ratio` (the fraction of
    patches merged away over the whole encoder, spread evenly over the layers).
    OpenVLA / OFT (each of the fused DINOv2 and SigLIP ViTs, CLS/register tokens never merged) and
    SmolVLA take "unmerge" only (tome_families.py says why) and merge after every layer but the last.
    """

    name = "token-merge"
    supported_components = ("vision_encoder",)
    r: int = 0
    ratio: float = 0.0
    mode: str = "unmerge"

    def validate(self) -> None:
        self.check_range("r", 0, 10**6)
        self.check_range("ratio", 0.0, 1.0, hi_open=True)
        if (self.r > 0) == (self.ratio > 0):
            raise self.error("r", "give exactly one of r (> 0) or ratio (in (0, 1))")
        self.check_choice("mode", ("unmerge", "reduce"))


register_pass(VisualTokenPruneConfig, "vla_compress.passes.tokens.fastv:prune_visual_tokens", needs="tokens")
register_pass(TokenMergeConfig, "vla_compress.passes.tokens.tome:merge_tokens", needs="tokens")
