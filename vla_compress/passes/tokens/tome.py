"""token-merge: ToMe bipartite soft matching inside the vision encoder (Bolya et al. 2023).

The matching, the merging encoders and the schedule are nn/tome.py; where a family's encoders are
and which modes they allow is the family's `merge_tokens` (its `tokens` capability): the reference
family wraps its SigLIP encoder and allows "reduce" when its projector does not need the grid;
OpenVLA's two ViTs and SmolVLA's encoder merge and unmerge in place. The schedule is saved to
token_reduction.json (checkpoint/tokens.py) and put back on load (models/sidecars.py).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, PassError
from ...models.registry import family_of
from ...nn.tome import schedule  # noqa: F401  (re-exported: the pass's schedule rule)
from ..base import PassContext
from .config import TokenMergeConfig


def merge_tokens(vla: Any, config: TokenMergeConfig, context: PassContext) -> Any:
    try:
        merge = family_of(vla).hook("tokens", "merge_tokens", f"pass {config.name!r}")
    except ConfigError as e:
        raise PassError(str(e)) from None
    return merge(vla, config, context)
