"""Where the data vla-compress ships lives, and where it writes what it measures.

Shipped data, installed with the package:

    profiles/                           recipes (`vla-compress recipes`, `--profile NAME`)
    hardware/                           device profiles (`vla-compress hardware list`, `-H NAME`)
    checkpoints/reference-small-chunk/  the checkpoint `vla-compress demo` runs

In a source checkout (and an editable install of one) these are the repository's own top-level
folders. A wheel carries copies under `vla_compress/_shipped/`: the links
`vla_compress/_shipped/{profiles,hardware,checkpoints}` point at the top-level folders, so
setuptools packages them as package data (see pyproject.toml) without a second copy in git.

Your own files, beside or instead of the shipped ones:
  - a recipe or device profile given as a path to a YAML file (`--profile my.yaml`,
    `-H ./my-board.yaml`) is read from there; a bare name is looked up in the shipped folder.
  - `$VLA_COMPRESS_HARDWARE_DIR` replaces the hardware folder: device profiles are read from it
    (only from it), and the profiler writes `local-host.yaml` and `calibration/` into it.
  - in an installed package (the shipped folder is inside site-packages: read-only in spirit,
    replaced on upgrade) the profiler writes `local-host.yaml` and `calibration/NAME.yaml` to the
    user folder `$XDG_CACHE_HOME/vla-compress/hardware` (default `~/.cache/vla-compress/hardware`),
    and device profiles are read from there first, then from the shipped folder: a profile you
    put there extends the shipped set, or overrides a shipped one of the same name.
  - in a checkout they are written into the checkout's `hardware/` (git-ignored), as always.

Only path arithmetic here (a few stat calls): no YAML, no torch, nothing written.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_ROOT = _PACKAGE.parent  # the repository root when running from a checkout


def in_checkout() -> bool:
    """True when the package runs from a source checkout (pyproject.toml beside it), an editable
    install included; False for a copy installed from a wheel."""
    return (_ROOT / "pyproject.toml").is_file()


def shipped(name: str) -> Path:
    """The shipped folder `name` ("profiles", "hardware", "checkpoints"): the checkout's top-level
    folder in a checkout, the copy installed with the package otherwise. It may not exist (a wheel
    built without it); callers say what is missing."""
    return _ROOT / name if in_checkout() else _PACKAGE / "_shipped" / name


def user_dir(name: str) -> Path:
    """The user-writable folder for `name` ($XDG_CACHE_HOME/vla-compress/NAME, default
    ~/.cache/vla-compress/NAME). Not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vla-compress" / name


def is_installed_copy(directory: str | Path, name: str) -> bool:
    """True when `directory` is the shipped folder `name` as installed inside the package (where
    nothing should be written)."""
    if in_checkout():
        return False
    try:
        return Path(directory).resolve() == shipped(name).resolve()
    except OSError:
        return False


def writable(directory: str | Path, name: str) -> Path:
    """Where files that belong beside `directory` are written (and read back): `directory` itself,
    unless it is the installed copy of the shipped folder `name`, then the user folder."""
    return user_dir(name) if is_installed_copy(directory, name) else Path(directory)


def search_path(name: str, override: str | Path | None = None) -> list[Path]:
    """The folders to look up `name` data in, first match wins: just `override` when given (an
    environment variable's folder); the checkout's folder in a checkout; else the user folder,
    then the installed shipped folder."""
    if override:
        return [Path(override)]
    if in_checkout():
        return [shipped(name)]
    return [user_dir(name), shipped(name)]
