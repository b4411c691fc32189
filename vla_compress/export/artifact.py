"""An exported artifact on disk: a directory with its files and a JSON manifest (`artifact.json`).

Manifest keys: format, precision, status ("unvalidated" after export, then "ok" or "failed"
after validation; "failed" also when the export itself raised), files {name: {sha256, bytes}},
source (family, head, checkpoint path and hashes when known), config, opset, io (per graph:
input/output names, dtypes, shapes with symbolic axes), model (what the runtime needs to drive
the graphs), parity (the last ParityReport), versions, created.

Directories are staged: files are written to a sibling temporary directory that replaces
`out_dir` only when complete, so an interrupted export never leaves a half artifact behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError, ExportError, OutputError
from ..fileio import read_json, write_json

MANIFEST = "artifact.json"
MANIFEST_VERSION = 1
STATUSES = ("unvalidated", "ok", "failed")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, dict]:
    """{relative name: {sha256, bytes}} of every file under `root` except the manifest."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


class Artifact:
    """A loaded artifact directory: its path and manifest, with the checks runtimes rely on."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # --- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        if not path.is_dir():
            raise ExportError(path, "artifact directory not found")
        manifest = read_json(path / MANIFEST)
        missing = [k for k in ("format", "precision", "status", "files") if k not in manifest]
        if not isinstance(manifest, dict) or missing:
            raise ExportError(path / MANIFEST, f"not an artifact manifest (missing {missing})")
        if manifest["status"] not in STATUSES:
            raise ExportError(path / MANIFEST, f"unknown status {manifest['status']!r}; expected one of {STATUSES}")
        return cls(path, manifest)

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    @property
    def failures(self) -> list[str]:
        parity = self.manifest.get("parity") or {}
        return list(parity.get("failures") or []) + ([self.manifest["error"]] if self.manifest.get("error") else [])

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.is_file():
            raise ExportError(p, f"file listed by {MANIFEST} is missing")
        return p

    def require_usable(self, allow_failed: bool = False) -> None:
        """Refuse a failed artifact (what "not shipped" means) unless the caller opts in."""
        if self.status == "failed" and not allow_failed:
            why = "; ".join(self.failures) or "see parity in the manifest"
            raise ExportError(self.path, f"artifact failed validation ({why}); pass allow_failed=True to load it anyway")

    def verify_files(self) -> None:
        """Check every listed file against its recorded sha256 (detects edits after export)."""
        for name, meta in self.files.items():
            if sha256_file(self.file(name)) != meta["sha256"]:
                raise ExportError(self.path / name, f"sha256 differs from {MANIFEST}: the file changed after export")

    # --- writing -------------------------------------------------------------------------------
    def record_validation(self, report: Any) -> None:
        """Store a ParityReport, set status ok/failed and re-hash the files that were validated."""
        self.manifest["parity"] = report.to_dict()
        self.manifest["status"] = "ok" if report.passed else "failed"
        self.manifest["files"] = hash_files(self.path)
        self.manifest["validated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()

    def save(self) -> None:
        write_json(self.path / MANIFEST, self.manifest)

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, format={self.format!r}, precision={self.precision!r}, status={self.status!r})"


def new_manifest(fmt: str, precision: str, config: dict, source: dict, **extra: Any) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION, "format": fmt, "precision": precision, "status": "unvalidated",
        "config": config, "source": source, "files": {}, "parity": None, "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vla-compress", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def staged_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `out_dir` when the block succeeds.

    `out_dir` may be absent, empty, or a previous artifact (it is replaced); anything else is
    refused, so an export never deletes a user's unrelated files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        raise ConfigError(f"{out_dir}: exists and is not an artifact directory; refusing to overwrite it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".staging", dir=out_dir.parent))
    except OSError as e:  # a read-only or full destination, before anything was written
        raise OutputError(out_dir, f"cannot be written: {e.strerror or e}") from None
    try:
        yield stage
        replace_dir(stage, out_dir)
    except OutputError as e:  # a full disk / read-only folder: name the file as the user asked for it
        if stage in e.path.parents:
            raise OutputError(out_dir / e.path.relative_to(stage), e.problem) from None
        raise
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an existing `dst` with two renames (never half-replaced)."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / "x")
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
