"""Safe file I/O: atomic writes and loading tensors without unpickling.

Why a module of its own: every writer in vla-compress goes through `atomic_write` so an
interrupted run never leaves a half-written checkpoint, report or manifest behind, and every
reader of weights goes through `load_safetensors`/`load_torch_state_dict` so an untrusted
pickle is never executed by accident.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import CheckpointError, UnsafeFileError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write JSON (sorted keys, indented) so diffs of manifests stay readable."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    """Read JSON, turning a missing file or a syntax error into a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"invalid JSON at line {e.lineno}: {e.msg}") from None


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Atomically save a dict of torch tensors as safetensors (contiguous copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | Path) -> dict:
    """Load a safetensors file, with a clear error for a missing, truncated or corrupt file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(path, f"not a valid safetensors file ({e}); it may be truncated or corrupt") from None


def load_torch_state_dict(path: str | Path, allow_pickle: bool = False) -> dict:
    """Load a `.pt`/`.bin` state dict.

    By default only `weights_only=True` loading is allowed, which refuses arbitrary pickled
    objects; `allow_pickle=True` is the explicit opt-in for files the user trusts.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        if not allow_pickle and ("weights_only" in str(e) or "Unsupported global" in str(e)):
            raise UnsafeFileError(
                path,
                "contains pickled Python objects beyond plain tensors; refusing to unpickle it. "
                "Convert it to safetensors, or pass --allow-pickle if you trust the file.",
            ) from None
        raise CheckpointError(path, f"cannot be read as a torch state dict ({e})") from None
