"""The prunable layer stacks of a model, as its family declares them (models/<family>/prune_<family>.py
`stacks`, each an nn.stacks.Stack), so the layer-drop and width-prune transforms are the same code
for every family; and `sync_config`, which writes a pruned stack's sizes back into the family's
config (the family's `sync`) so that save -> load rebuilds the pruned shapes.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, PassError
from ...models.registry import family_of
from ...nn.stacks import Stack


def _prune_hook(vla: Any, name: str) -> Any:
    try:
        return family_of(vla).hook("prune", name, "structured pruning")
    except ConfigError as e:
        raise PassError(str(e)) from None


def family_stacks(vla: Any) -> list[Stack]:
    """Every prunable layer stack of `vla` (an error for a family without a layout)."""
    return _prune_hook(vla, "stacks")(vla)


def sync_config(vla: Any, stack: Stack) -> None:
    """Write `stack`'s current layer count and sizes (read from the modules) into the family's config."""
    _prune_hook(vla, "sync")(vla, stack)


def stacks_for(vla: Any, component: str) -> list[Stack]:
    """The prunable layer stacks of one component (an error when it has none)."""
    stacks = family_stacks(vla)
    out = [s for s in stacks if s.component == component]
    if not out:
        have = sorted({s.component for s in stacks})
        raise PassError(f"component {component!r} of the {vla.family} family has no prunable layer stack "
                        f"(prunable: {', '.join(have)})")
    return out


def layer_names(stack: Stack, limit: int | None = None) -> dict[str, Any]:
    """Canonical name -> layer for the first `limit` (default: active) layers of a stack."""
    n = stack.n_active() if limit is None else limit
    return {f"{stack.prefix}.{i}": stack.layers[i] for i in range(n)}


def scoped_layers(vla: Any, config: Any, width: bool = False) -> list[tuple[Stack, list[int]]]:
    """The stacks of the components in scope with the indices of their layers that `where.include` /
    `exclude` select (each pattern must match a layer of some stack; stacks with none are left out).
    Only layers that run in a policy step are candidates (with `width`: that run their output
    projection and MLP)."""
    from ..base import scoped_components, scoped_modules

    stacks = [s for comp in scoped_components(vla, config) for s in stacks_for(vla, comp)]
    names: dict[str, Any] = {}
    for s in stacks:
        names.update(layer_names(s, s.n_width_active() if width else None))
    selected = scoped_modules(vla, config, candidates=names)
    out = []
    for s in stacks:
        idx = sorted(int(k.rsplit(".", 1)[1]) for k in selected if k.rsplit(".", 1)[0] == s.prefix)
        if idx:
            out.append((s, idx))
    if not out:
        raise config.error("where", "no layer is in scope")
    return out
