"""Reference-family presets (real-size shapes on the meta device, for FLOP/byte counting and
estimates), the meta model of an exported artifact, and the tiny random fixture for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .configuration_reference import PRESETS


def preset_names() -> list[str]:
    return list(PRESETS)


def build_preset(name: str) -> Any:
    """A model of preset `name` on the meta device (shapes only, nothing allocated)."""
    import torch

    from .adapter import ReferenceVLA

    with torch.device("meta"):
        return ReferenceVLA.from_preset(name)


def meta_model_from_artifact(root: Path) -> Any:
    """The artifact's network on the meta device, rebuilt from its own config.json (which records
    pruning and token budgets) and tokenizer.json; None when the artifact has no config.json."""
    import torch

    from ...fileio import read_json
    from ..tokenizer import InstructionTokenizer
    from .adapter import ReferenceVLA
    from .configuration_reference import ReferenceConfig

    if not (root / "config.json").is_file():
        return None
    cfg = ReferenceConfig.from_dict(read_json(root / "config.json"))
    tokenizer = InstructionTokenizer.from_file(root / "tokenizer.json")
    with torch.device("meta"):
        vla = ReferenceVLA.build(cfg, tokenizer=tokenizer)
        if cfg.visual_token_budget:
            vla.visual_keep = torch.zeros(cfg.visual_tokens, dtype=torch.long)
    return vla


def tiny(seed: int = 0, **kwargs: Any) -> Any:
    from .adapter import ReferenceVLA

    return ReferenceVLA.tiny(seed=seed, **kwargs)
