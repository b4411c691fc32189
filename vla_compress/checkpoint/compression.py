"""compression.json: {"format_version": 1, "log": [pass entries], "token_merge": legacy | null}.

`log` is `vla.compression_log` (one entry per pass, see passes/runner.py). `token_merge` is only
read: checkpoints written before token_reduction.json held every family's ToMe schedule kept the
reference family's here as {"r_per_layer": [ints], "mode": "unmerge"|"reduce"}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fileio import read_json, write_json

COMPRESSION_FILE = "compression.json"
FORMAT_VERSION = 1


def jsonable(x: Any) -> Any:
    """Plain JSON types (tensors and numpy values become lists / numbers)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # torch.Tensor, np.ndarray, np.generic
        return x.tolist()
    return x


def write_compression(path: str | Path, log: list) -> str | None:
    """Write compression.json into checkpoint directory `path`, or remove a stale one when `log` is
    empty; returns the name written."""
    target = Path(path) / COMPRESSION_FILE
    if not log:
        target.unlink(missing_ok=True)
        return None
    write_json(target, {"format_version": FORMAT_VERSION, "log": jsonable(list(log)), "token_merge": None})
    return COMPRESSION_FILE


def read_compression(path: str | Path) -> dict | None:
    """compression.json of checkpoint directory `path` (validated), or None when there is none."""
    source = Path(path) / COMPRESSION_FILE
    if not source.is_file():
        return None
    d = read_json(source)
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(source, f"expected a mapping with format_version {FORMAT_VERSION}, got "
                                      f"{d.get('format_version') if isinstance(d, dict) else type(d).__name__!r}")
    if not isinstance(d.get("log", []), list):
        raise CheckpointError(source, "log must be a list of pass entries")
    merge = d.get("token_merge")
    if merge is not None:
        r = merge.get("r_per_layer") if isinstance(merge, dict) else None
        if (not isinstance(r, list) or not all(isinstance(v, int) and v >= 0 for v in r)
                or merge.get("mode") not in ("unmerge", "reduce")):
            raise CheckpointError(source, "token_merge must be {\"r_per_layer\": [ints >= 0], \"mode\": "
                                          f"\"unmerge\"|\"reduce\"}}, got {merge!r}")
    return d
