"""Pruned per-layer shapes as a family's config records them: {stack: [[heads, kv_heads, mlp], ...]}."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def parse_layer_sizes(value: Any, source: str) -> dict[str, list[tuple[int, int, int]]]:
    """Validate a recorded {stack name: [[heads, kv heads, mlp width], ...]} mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: layer_sizes must map a layer stack to [[heads, kv_heads, mlp], ...]")
    out = {}
    for name, rows in value.items():
        ok = isinstance(rows, (list, tuple)) and all(
            isinstance(r, (list, tuple)) and len(r) == 3 and all(isinstance(x, int) and x > 0 for x in r)
            and r[0] % r[1] == 0 for r in rows)
        if not ok:
            raise ConfigError(f"{source}: layer_sizes.{name} must be a list of [heads, kv_heads, mlp_width] "
                              f"(positive integers, heads a multiple of kv_heads), got {rows!r}")
        out[str(name)] = [tuple(r) for r in rows]
    return out
