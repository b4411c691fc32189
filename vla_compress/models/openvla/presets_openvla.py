"""OpenVLA / OpenVLA-OFT presets: the published 7B shapes on the meta device (estimates only)."""

from __future__ import annotations

from typing import Any

_PRESETS = {"openvla-7b": "OpenVLA", "openvla-7b-oft": "OpenVLAOFT"}


def preset_names() -> list[str]:
    return list(_PRESETS)


def build_preset(name: str) -> Any:
    from . import adapter

    return getattr(adapter, _PRESETS[name]).realistic(device="meta")
