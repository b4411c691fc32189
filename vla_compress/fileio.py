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

from .errors import CheckpointError, OutputError, UnsafeFileError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    An OSError while writing (a full disk, a read-only folder, no permission) becomes an
    OutputError naming `path`; the temporary file is removed either way."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(path, f"cannot be written: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(path, f"cannot be written: {e.strerror or e}") from None
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


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def pickle_weights_beside(path: str | Path) -> list[Path]:
    """Pickle weight files (*.bin, *.pt, *.pth, *.ckpt) in `path`'s folder, other than OpenVLA-OFT's
    component files (`<part>--<step>_checkpoint.pt`, read by that family on their own)."""
    folder = Path(path).parent
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and "--" not in p.name and p.is_file())


def missing_weights(path: str | Path, reads_pickle: bool = False) -> CheckpointError:
    """The error for a missing safetensors file `path`: it names pickle weights found beside it and
    whether --allow-pickle would read them (`reads_pickle`: the caller's format falls back to them)."""
    path = Path(path)
    found = pickle_weights_beside(path)
    if not found:
        return CheckpointError(path, "file not found")
    names = ", ".join(p.name for p in found)
    if reads_pickle:
        return UnsafeFileError(path, f"file not found; the folder holds pickle weights ({names}), which are not "
                                     "unpickled by default: pass --allow-pickle if you trust them, or convert them "
                                     "to safetensors")
    return UnsafeFileError(path, f"file not found; the folder holds pickle weights ({names}), which this format "
                                 "does not read (not even with --allow-pickle): convert them to safetensors")


def load_safetensors(path: str | Path, allow_pickle: bool | None = None) -> dict:
    """Load a safetensors file, with a clear error for a missing, truncated or corrupt file.

    A missing file's error names pickle weights found beside it (`pytorch_model.bin`, ...). Callers
    whose format may fall back to such a file pass `allow_pickle` (the user's --allow-pickle): True
    loads the folder's one pickle weight file instead; False says the flag would."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        found = pickle_weights_beside(path)
        if not allow_pickle or not found:
            raise missing_weights(path, reads_pickle=allow_pickle is not None)
        if len(found) > 1:
            raise CheckpointError(path, f"file not found, and several pickle weight files could stand for it "
                                        f"({', '.join(p.name for p in found)}); keep one, or convert it to safetensors")
        state = load_torch_state_dict(found[0], allow_pickle=True)
        if not isinstance(state, dict):
            raise CheckpointError(found[0], f"holds a {type(state).__name__}, not a state dict of tensors")
        return state
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
