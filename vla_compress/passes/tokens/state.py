"""What a token-reduced OpenVLA / OpenVLA-OFT / SmolVLA checkpoint keeps beside its weights.

Those families save in their native layouts (Hugging Face shards, LeRobot's model.safetensors),
which have no place for the visual keep set or a ToMe schedule, and loaders outside vla-compress
must still read the weights. So the token passes' decisions go to one side file:

    token_reduction.json   {"format_version": 1,
                            "visual_keep": [indices] | null, "visual_tokens_full": int,
                            "token_merge": {"r_per_layer": {encoder: [r, ...]}, "mode": "unmerge"} | null}

The family's save_pretrained calls `save_token_state` and its from_pretrained calls
`restore_token_state` on the loaded model. (The reference family keeps its keep set in the state
dict and its ToMe schedule in compression.json: passes/checkpoint.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from ...fileio import read_json, write_json

TOKENS_FILE = "token_reduction.json"
FORMAT_VERSION = 1


def full_visual_tokens(vla: Any) -> int:
    """Visual tokens a keep set indexes: every camera's / image's (not SmolVLA's image special tokens)."""
    if vla.family == "smolvla":
        from .fastv_smolvla import patch_tokens

        return patch_tokens(vla)
    keep = vla.visual_keep
    if not keep.numel():
        return vla.token_counts().visual
    saved = keep
    try:
        vla.visual_keep = keep.new_zeros(0)
        return vla.token_counts().visual
    finally:
        vla.visual_keep = saved


def token_state(vla: Any) -> dict | None:
    """The token reduction of `vla` as JSON-able data, or None when it has none."""
    from .tome_families import tome_state

    keep = vla.visual_keep
    merge = tome_state(vla)
    if not keep.numel() and merge is None:
        return None
    return {"format_version": FORMAT_VERSION, "visual_keep": keep.tolist() if keep.numel() else None,
            "visual_tokens_full": full_visual_tokens(vla), "token_merge": merge}


def save_token_state(vla: Any, path: str | Path) -> str | None:
    """Write token_reduction.json into checkpoint directory `path` (atomically), or remove a stale
    one when the model has no token reduction; returns the name written."""
    target = Path(path) / TOKENS_FILE
    state = token_state(vla)
    if state is None:
        target.unlink(missing_ok=True)
        return None
    write_json(target, state)
    return TOKENS_FILE


def restore_token_state(vla: Any, path: str | Path) -> Any:
    """Re-apply the keep set and the ToMe schedule of `path`/token_reduction.json (if any) to a
    model freshly loaded from that checkpoint; a file that does not fit the model is an error."""
    import torch

    from .tome_families import install_tome

    source = Path(path) / TOKENS_FILE
    if not source.is_file():
        return vla
    d = read_json(source)
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(source, f"expected a mapping with format_version {FORMAT_VERSION}")
    full = full_visual_tokens(vla)
    if d.get("visual_tokens_full") != full:
        raise CheckpointError(source, f"written for a model with {d.get('visual_tokens_full')} visual tokens; "
                                      f"this one has {full}")
    keep = d.get("visual_keep")
    if keep is not None:
        if (not isinstance(keep, list) or not keep or not all(isinstance(i, int) and 0 <= i < full for i in keep)
                or keep != sorted(set(keep))):
            raise CheckpointError(source, f"visual_keep must be a non-empty increasing list of indices below {full}")
        vla.visual_keep = torch.tensor(keep, dtype=torch.long)
    merge = d.get("token_merge")
    if merge is not None:
        try:
            install_tome(vla, merge)
        except ValueError as e:
            raise CheckpointError(source, f"token_merge: {e}") from None
    return vla
