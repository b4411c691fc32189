"""Checks a family's config loader runs on the raw JSON before building its dataclasses.

A key that shapes the model must not be filled in with a default when a file lacks it: a truncated
or hand-edited config.json would otherwise build a different network (and fail later, far from the
cause, or not at all). Families keep defaults only where their native format has them.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterable

from ..errors import ConfigError

_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "tuple[int, ...]": ("a list of integers",
                        lambda v: isinstance(v, (list, tuple)) and all(_KINDS["int"][1](x) for x in v)),
    "tuple[str, ...]": ("a list of strings", lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
}


def require_keys(d: dict, keys: Iterable[str], where: str = "") -> None:
    """ConfigError naming every key of `keys` that `d` lacks (`where` prefixes them, e.g. "vision.")."""
    missing = [f"{where}{k}" for k in keys if k not in d]
    if missing:
        raise ConfigError(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


def check_types(cls: type, d: dict, where: str = "") -> None:
    """ConfigError when a value in `d` does not have the JSON type of dataclass `cls`'s field
    (fields annotated int, float, str, bool, tuple[int, ...] or tuple[str, ...]; others unchecked)."""
    for f in fields(cls):
        if f.name not in d or str(f.type) not in _KINDS:
            continue
        what, ok = _KINDS[str(f.type)]
        if not ok(d[f.name]):
            raise ConfigError(f"{where}{f.name}: expected {what}, got {d[f.name]!r}")


def as_int(d: dict, key: str, default: Any) -> int:
    """int(d[key]) (or `default` when absent), as a ConfigError naming the key when it is not a number."""
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or v is None:
        raise ConfigError(f"{key}: expected an integer, got {v!r}")
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {v!r}") from None
