"""A run folder, its manifest, and stages cached by the hash of their inputs.

    RUN_DIR/
      manifest.json          versions, recipe, checkpoint hashes, stages, metrics, verdict
      stages/<name>/         one folder per finished stage: result.json + the files it wrote
      report.html

A stage's key is the sha256 of everything that determines its output: its config, the keys of the
stages it reads, the checkpoint's file hashes and the vla-compress version. `Run.stage` returns the
stored result when a finished stage with the same key exists, and otherwise runs it in
`stages/<name>.partial/`, renamed into place only when complete; an interrupted run therefore
resumes at the first unfinished stage, and a change redoes only the stages whose inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..fileio import read_json, write_json
from ..manifest import MANIFEST_VERSION, READABLE_VERSIONS

MANIFEST = "manifest.json"
STAGE_SCHEMA = 1  # bump when a stage's result layout changes: old caches are then recomputed


class Hooks:
    """What a run reports while it works; the CLI renders these with rich, tests ignore them."""

    def stage_start(self, name: str, what: str) -> None: ...

    def stage_done(self, name: str, cached: bool, wall_s: float) -> None: ...

    def say(self, message: str) -> None: ...

    def episodes(self, name: str, done: int, total: int, successes: int) -> None: ...


def key_of(material: Any) -> str:
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("vla-compress", "torch", "onnx", "onnxruntime", "transformers", "nncf", "metaworld", "mujoco",
                "gguf", "llama_cpp_python", "tensorrt"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def hash_checkpoint(path: Path, previous: dict | None = None) -> dict[str, dict]:
    """{file: {bytes, mtime_ns, sha256}} of a checkpoint directory; unchanged files (same size and
    mtime as in `previous`) keep their recorded hash, so a 15 GB checkpoint is hashed once."""
    from ..export.artifact import sha256_file

    previous = previous or {}
    out = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(path).as_posix()
        st = p.stat()
        old = previous.get(rel)
        if old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            out[rel] = old
        else:
            out[rel] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
    return out


class Run:
    """A run folder: opened (resumed) or created, with its manifest kept on disk after every stage."""

    def __init__(self, root: str | Path, hooks: Hooks | None = None):
        self.root = Path(root)
        self.hooks = hooks or Hooks()
        path = self.root / MANIFEST
        if path.is_file():
            manifest = read_json(path)
            if not isinstance(manifest, dict) or manifest.get("manifest_version") not in READABLE_VERSIONS:
                raise ConfigError(f"{path}: not a vla-compress run manifest (or an incompatible version); "
                                  f"choose another --out folder")
            manifest["manifest_version"] = MANIFEST_VERSION  # an older run resumes: rewritten in this layout
            self.manifest = manifest
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise ConfigError(f"{self.root}: exists, is not empty and has no {MANIFEST}; refusing to write a run "
                                  f"into it (choose an empty or new --out folder)")
            self.manifest = {"manifest_version": MANIFEST_VERSION, "created": _now(), "stages": {}, "metrics": {}}
        self.manifest["versions"] = versions()

    # --- stages ----------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.root / "stages" / name

    def stage_key(self, name: str) -> str | None:
        entry = self.manifest["stages"].get(name)
        return entry["key"] if entry and entry.get("status") == "done" else None

    def stage(self, name: str, what: str, material: dict, fn: Callable[[Path], dict]) -> dict:
        """Run `fn(work_dir) -> result` unless a finished stage with the same key exists."""
        return self.stages_together([(name, what, material)], lambda works: [fn(works[0][1])])[0]

    def stages_together(self, entries: list[tuple[str, str, dict]],
                        fn: Callable[[list[tuple[str, Path]]], list[dict]]) -> list[dict]:
        """Several stages computed by one call (a compress run's variants evaluated together):
        `entries` are (name, what, material) as for `stage`; the finished ones are read back and
        `fn([(name, work_dir) ...])` computes the rest at once, each result written as its own stage
        (its wall time is the shared one). Returns the results in the order of `entries`."""
        todo, results = [], {}
        for name, what, material in entries:
            key = self._key(name, material)
            if self._is_done(name, key):
                entry = self.manifest["stages"][name]
                entry["cached"] = True
                self.save()
                self.hooks.stage_done(name, True, entry.get("wall_s", 0.0))
                results[name] = read_json(self.stage_dir(name) / "result.json")
            else:
                todo.append((name, what, key))
        if not todo:
            return [results[name] for name, _, _ in entries]
        works = []
        for name, what, key in todo:
            self.hooks.stage_start(name, what)
            work = self.stage_dir(name).with_name(name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            self.manifest["stages"][name] = {"key": key, "status": "running", "started": _now(), "what": what}
            works.append((name, work))
        self.save()
        t0 = time.perf_counter()
        try:
            out = fn(works)
        except BaseException as e:
            for name, _ in works:
                self.manifest["stages"][name].update(status="failed", error=f"{type(e).__name__}: {e}",
                                                     wall_s=round(time.perf_counter() - t0, 2))
            self.save()
            raise
        wall = time.perf_counter() - t0
        for (name, work), (_, what, key), result in zip(works, todo, out):
            final = self.stage_dir(name)
            write_json(work / "result.json", result)
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
            self.manifest["stages"][name] = {"key": key, "status": "done", "cached": False, "what": what,
                                             "started": self.manifest["stages"][name]["started"],
                                             "finished": _now(), "wall_s": round(wall, 2)}
            if len(works) > 1:
                self.manifest["stages"][name]["together_with"] = [n for n, _ in works if n != name]
            self.save()
            self.hooks.stage_done(name, False, wall)
            results[name] = result
        return [results[name] for name, _, _ in entries]

    def _key(self, name: str, material: dict) -> str:
        return key_of({"stage": name, "schema": STAGE_SCHEMA,
                       "version": self.manifest["versions"].get("vla-compress"), **material})

    def _is_done(self, name: str, key: str) -> bool:
        entry = self.manifest["stages"].get(name)
        return bool(entry and entry.get("key") == key and entry.get("status") == "done"
                    and (self.stage_dir(name) / "result.json").is_file())

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest["updated"] = _now()
        write_json(self.root / MANIFEST, self.manifest)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
