"""SmolVLA presets: smolvla_base's shapes on the meta device (estimates only)."""

from __future__ import annotations

from typing import Any


def preset_names() -> list[str]:
    return ["smolvla-450m"]


def build_preset(name: str) -> Any:
    from .adapter import SmolVLA

    return SmolVLA.realistic(device="meta")
