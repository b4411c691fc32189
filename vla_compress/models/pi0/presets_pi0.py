"""π0 presets: lerobot/pi0_base's shapes on the meta device (estimates only). π0.5's are in
presets_pi05.py: the registry maps a preset name to the first spec whose presets module lists it,
so each of the folder's two specs has its own module."""

from __future__ import annotations

from typing import Any


def preset_names() -> list[str]:
    return ["pi0-3b"]


def build_preset(name: str) -> Any:
    from .adapter import Pi0

    return Pi0.realistic("pi05" if name.startswith("pi05") else "pi0", device="meta")
