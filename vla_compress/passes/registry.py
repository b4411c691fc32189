"""One registry of passes by name: config class, apply function (resolved lazily), and the family
capability it needs (models/spec.py: "prune", "tokens", "distill"; none for quantization).

Config modules register their passes when imported; they import no torch, so listing passes or
validating a recipe stays cheap. The apply function is named as "module:function" and imported
on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PassError
from .base import PassConfig

# modules whose import registers the built-in passes
_BUILTIN = ("vla_compress.passes.prune.config", "vla_compress.passes.quantize.config",
            "vla_compress.passes.tokens.config", "vla_compress.passes.distill.config",
            "vla_compress.passes.denoise.config")
_PASSES: dict[str, "PassSpec"] = {}
_loaded = False


@dataclass(frozen=True)
class PassSpec:
    name: str
    config_cls: type[PassConfig]
    apply_path: str  # "package.module:function"
    needs: str = ""  # the family capability the pass needs ("" = every family)
    summary: str = ""

    @property
    def apply(self) -> Callable[..., Any]:
        module, _, fn = self.apply_path.partition(":")
        return getattr(importlib.import_module(module), fn)

    def families(self) -> tuple[str, ...]:
        """The registered families this pass runs on."""
        from ..models.registry import families

        return tuple(n for n, f in families().items() if not self.needs or f.supports(self.needs))

    def check_family(self, vla: Any) -> None:
        from ..errors import ConfigError
        from ..models.registry import family_of

        if not self.needs:
            return
        try:
            spec = family_of(vla)
        except ConfigError:  # not a registered family
            spec = None
        if spec is None or not spec.supports(self.needs):
            why = spec and (spec.refused.get(self.name) or spec.refused.get(self.needs))
            have = self.families()
            raise PassError(f"pass {self.name!r} supports the {', '.join(have)} famil"
                            f"{'y' if len(have) == 1 else 'ies'}, not {getattr(vla, 'family', '')!r}"
                            + (f" ({why})" if why else ""))


def register_pass(config_cls: type[PassConfig], apply: str, needs: str = "", summary: str = "") -> type[PassConfig]:
    name = config_cls.name
    if not name:
        raise PassError(f"{config_cls.__name__} has no pass name")
    if name in _PASSES and _PASSES[name].config_cls is not config_cls:
        raise PassError(f"pass {name!r} is registered twice ({_PASSES[name].config_cls.__name__}, "
                        f"{config_cls.__name__})")
    _PASSES[name] = PassSpec(name, config_cls, apply, needs, summary or (config_cls.__doc__ or "").split("\n")[0])
    return config_cls


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in _BUILTIN:
            importlib.import_module(m)


def get_pass(name: str) -> PassSpec:
    _load_builtins()
    if name not in _PASSES:
        raise PassError(f"unknown pass {name!r}; known: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def list_passes() -> dict[str, PassSpec]:
    _load_builtins()
    return dict(sorted(_PASSES.items()))


def config_from_dict(d: dict[str, Any]) -> PassConfig:
    """A pass config from its YAML/JSON form ({"pass": name, "version": ..., fields...})."""
    if not isinstance(d, dict) or "pass" not in d:
        raise PassError(f"a pass config needs a 'pass' key naming the pass, got {d!r}")
    return get_pass(d["pass"]).config_cls.from_dict(d)
