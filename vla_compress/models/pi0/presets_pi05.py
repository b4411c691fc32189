"""π0.5 presets: lerobot/pi05_base's shapes on the meta device (estimates only)."""

from __future__ import annotations

from .presets_pi0 import build_preset


def preset_names() -> list[str]:
    return ["pi05-3b"]


__all__ = ["build_preset", "preset_names"]
