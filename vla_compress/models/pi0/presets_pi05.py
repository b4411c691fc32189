"""π0.5 presets: lerobot/pi05_base's shapes on the meta device (estimates only)."""

from __future__ import annotations

from .presets_pi0 import build_preset, meta_model_from_artifact


def preset_names() -> list[str]:
    return ["pi05-3b"]


__all__ = ["build_preset", "meta_model_from_artifact", "preset_names"]
