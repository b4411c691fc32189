"""π0 presets: lerobot/pi0_base's shapes on the meta device (estimates only). π0.5's are in
presets_pi05.py: the registry maps a preset name to the first spec whose presets module lists it,
so each of the folder's two specs has its own module."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def preset_names() -> list[str]:
    return ["pi0-3b"]


def build_preset(name: str) -> Any:
    from .adapter import Pi0

    return Pi0.realistic("pi05" if name.startswith("pi05") else "pi0", device="meta")


def meta_model_from_artifact(root: Path) -> Any:
    """An artifact's network on the meta device, rebuilt from its own config.json (pruned depths and
    per-layer sizes under `vla_compress`, the visual-token budget) and its processor files; None when
    the artifact has no config.json. Shared by both specs (presets_pi05 re-exports it)."""
    import torch

    from ...checkpoint.layer_sizes import parse_layer_sizes
    from ..sidecars import restore_layer_sizes
    from .adapter import Pi0, Pi05, read_processor_files
    from .configuration_pi0 import Pi0Arch

    root = Path(root)
    if not (root / "config.json").is_file():
        return None
    cfg, processor = read_processor_files(root)
    klass = Pi05 if cfg.kind == "pi05" else Pi0
    with torch.device("meta"):
        vla = klass(Pi0Arch.from_config(cfg), processor)
        restore_layer_sizes(vla, parse_layer_sizes(cfg.settings.get("layer_sizes"), "vla_compress"), "vla_compress")
        budget = int(cfg.settings.get("visual_token_budget") or 0)
        if budget:
            vla.visual_keep = torch.zeros(budget, dtype=torch.long)
    return vla.eval()
