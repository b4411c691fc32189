"""Structured pruning that leaves a smaller dense model: whole layers (layer-drop) and attention
heads / MLP channels (width-prune), for every family with a layout in layout.py (reference,
OpenVLA, OpenVLA-OFT, SmolVLA)."""

from .config import LayerDropConfig, WidthPruneConfig

__all__ = ["LayerDropConfig", "WidthPruneConfig"]
