"""The family registry: one registration line per family folder, and what finds a checkpoint's family.

A family folder `models/<family>/` declares its `FamilySpec`s in `spec.py` (torch-free) as `SPECS`;
adding a family is that folder plus one line in `FAMILY_FOLDERS` (docs/architecture.md lists the
files). Specs are read on first use, so importing this module imports no family code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from .spec import FamilySpec

FAMILY_FOLDERS = (
    "reference",
    "openvla",
    "smolvla",
    "pi0",
)

_SPECS: dict[str, FamilySpec] = {}


def families() -> dict[str, FamilySpec]:
    """Every registered family spec by name, in registration order."""
    if not _SPECS:
        for folder in FAMILY_FOLDERS:
            for spec in importlib.import_module(f"{__package__}.{folder}.spec").SPECS:
                _SPECS[spec.name] = spec
    return _SPECS


def get_family(name: str) -> FamilySpec:
    specs = families()
    if name not in specs:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(specs)}")
    return specs[name]


def family_of(vla: Any) -> FamilySpec:
    """The spec of an adapter (its `family` attribute)."""
    return get_family(getattr(vla, "family", "") or type(vla).__name__)


def preset_names() -> dict[str, str]:
    """Every `preset:NAME` the families declare, NAME -> family."""
    out: dict[str, str] = {}
    for spec in families().values():
        if spec.presets is not None:
            for name in spec.hook("presets", "preset_names")():
                out.setdefault(name, spec.name)
    return out


def build_preset(name: str) -> Any:
    """A model of preset `name` on the meta device (shapes only, nothing allocated)."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset '{name}'; known: {', '.join(names)}")
    return get_family(names[name]).hook("presets", "build_preset")(name)


def detect_family(path: str | Path) -> str:
    """The family of checkpoint directory `path`, from its config.json."""
    from ..fileio import read_json

    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(path, "expected a checkpoint directory (with config.json)")
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict):
        raise CheckpointError(path / "config.json", "expected a JSON object")
    for spec in families().values():
        if spec.detect is not None and spec.detect(cfg):
            return spec.name
    raise CheckpointError(path / "config.json",
                          f"unrecognised model (model_type={cfg.get('model_type')!r}, type={cfg.get('type')!r}); "
                          f"supported families: {', '.join(s.name for s in families().values() if s.detect)}")


def load_vla(path: str | Path, allow_pickle: bool = False, **kw: Any) -> Any:
    """Load any supported checkpoint directory into its adapter (eval mode, CPU)."""
    return get_family(detect_family(path)).loader()(Path(path), allow_pickle=allow_pickle, **kw)
