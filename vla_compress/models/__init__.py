"""Model families behind the VLA adapter contract, and `load_vla` which picks the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError

# family name -> (detector(config dict) -> bool, loader(path, **kw))
_FAMILIES: dict[str, tuple[Callable[[dict], bool], Callable[..., Any]]] = {}


def register_family(name: str, detect: Callable[[dict], bool], load: Callable[..., Any]) -> None:
    _FAMILIES[name] = (detect, load)


def _load_reference(path: Path, **kw: Any):
    from .reference import ReferenceVLA

    return ReferenceVLA.from_pretrained(path, **kw)


register_family("reference", lambda c: c.get("model_type") == "vla-compress-reference", _load_reference)


def _load_openvla(path: Path, **kw: Any):
    from .openvla import load_openvla

    return load_openvla(path, **kw)  # OpenVLA-OFT when the directory holds action_head--*.pt


register_family("openvla", lambda c: c.get("model_type") == "openvla", _load_openvla)


def _load_smolvla(path: Path, **kw: Any):
    from .smolvla import load_smolvla

    return load_smolvla(path, **kw)  # LeRobot's layout; the VLM's config/tokenizer found locally


register_family("smolvla", lambda c: c.get("type") == "smolvla", _load_smolvla)


def detect_family(path: str | Path) -> str:
    from ..fileio import read_json

    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(path, "expected a checkpoint directory (with config.json)")
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict):
        raise CheckpointError(path / "config.json", "expected a JSON object")
    for name, (detect, _) in _FAMILIES.items():
        if detect(cfg):
            return name
    raise CheckpointError(path / "config.json",
                          f"unrecognised model (model_type={cfg.get('model_type')!r}, type={cfg.get('type')!r}); "
                          f"supported families: {', '.join(_FAMILIES)}")


def load_vla(path: str | Path, allow_pickle: bool = False, **kw: Any):
    """Load any supported checkpoint directory into its adapter (eval mode, CPU)."""
    family = detect_family(path)
    return _FAMILIES[family][1](Path(path), allow_pickle=allow_pickle, **kw)
