"""Structured pruning that leaves a smaller dense model: whole layers (layer-drop) and attention
heads / MLP channels (width-prune), for the reference family's Llama backbone and SigLIP encoder."""

from .config import LayerDropConfig, WidthPruneConfig

__all__ = ["LayerDropConfig", "WidthPruneConfig"]
