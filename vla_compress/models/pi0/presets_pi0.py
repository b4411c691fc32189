"""π0 / π0.5 presets: lerobot/pi0_base's and pi05_base's shapes on the meta device (estimates only)."""

from __future__ import annotations

from typing import Any

PRESETS = {"pi0-3b": "pi0", "pi05-3b": "pi05"}


def preset_names() -> list[str]:
    return list(PRESETS)


def build_preset(name: str) -> Any:
    from .adapter import Pi0

    return Pi0.realistic(PRESETS[name], device="meta")
