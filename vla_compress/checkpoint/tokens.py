"""token_reduction.json: what the token passes decided, beside the weights of every family.

    {"format_version": 1,
     "visual_keep": [indices] | null, "visual_tokens_full": int,
     "token_merge": {"r_per_layer": {encoder: [r, ...]}, "mode": "unmerge" | "reduce"} | null}

Native layouts (Hugging Face shards, LeRobot's model.safetensors) have no place for a keep set or
a ToMe schedule, and loaders outside vla-compress must still read the weights, so the decisions go
to this one side file. Checks that need the model (the token count, the encoders) are made by
models/sidecars.py when it applies the file.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..fileio import read_json, write_json

TOKENS_FILE = "token_reduction.json"
FORMAT_VERSION = 1


def write_token_reduction(path: str | Path, visual_keep: list[int] | None, visual_tokens_full: int,
                          token_merge: dict | None) -> str | None:
    """Write token_reduction.json into checkpoint directory `path` (atomically), or remove a stale
    one when there is no reduction; returns the name written."""
    target = Path(path) / TOKENS_FILE
    if not visual_keep and token_merge is None:
        target.unlink(missing_ok=True)
        return None
    write_json(target, {"format_version": FORMAT_VERSION, "visual_keep": visual_keep or None,
                        "visual_tokens_full": int(visual_tokens_full), "token_merge": token_merge})
    return TOKENS_FILE


def read_token_reduction(path: str | Path) -> dict | None:
    """token_reduction.json of checkpoint `path` (its form validated), or None when there is none."""
    source = Path(path) / TOKENS_FILE
    if not source.is_file():
        return None
    d = read_json(source)
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(source, f"expected a mapping with format_version {FORMAT_VERSION}")
    if not isinstance(d.get("visual_tokens_full"), int):
        raise CheckpointError(source, f"visual_tokens_full must be an integer, got {d.get('visual_tokens_full')!r}")
    return d


def check_token_count(d: dict, full: int, path: str | Path) -> None:
    """The file `d` (read from checkpoint `path`) fits a model with `full` visual tokens."""
    source = Path(path) / TOKENS_FILE
    if d["visual_tokens_full"] != full:
        raise CheckpointError(source, f"written for a model with {d['visual_tokens_full']} visual tokens; "
                                      f"this one has {full}")
    keep = d.get("visual_keep")
    if keep is not None and (not isinstance(keep, list) or not keep or keep != sorted(set(keep))
                             or not all(isinstance(i, int) and 0 <= i < full for i in keep)):
        raise CheckpointError(source, f"visual_keep must be a non-empty increasing list of indices below {full}")
