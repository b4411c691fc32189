"""Executors: who runs a closed-loop evaluation's episodes.

evaluate() (rollout.py) turns a suite into jobs, `(task, seed)` pairs, and asks an executor for one
EpisodeResult per job; it never knows where the episodes ran. Episodes are deterministic by seed, so
every executor gives the same outcomes (success, steps, inferences) for the same jobs; only the
timings differ.

- `local`: in this process (one worker) or in a multiprocessing spawn Pool (several).
- `ray`: Ray actors on a local cluster started for the run, or on an existing one (`address`);
  see ray_executor.py. Ray is an optional extra: `pip install 'vla-compress[ray]'`.

Policies are not shipped to workers as objects (ONNX sessions and llama.cpp contexts do not
pickle): every worker builds its own once from the PolicySpec, with its threads pinned.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from ..errors import ConfigError
from .episode import Batch, EpisodeResult, EpisodeWorker, PolicySpec, interleave, run_one_of, same_threads

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'vla-compress[ray]' (in a checkout: pip install -c constraints.txt 'ray[default]==2.60.0')"


class Executor(Protocol):
    kind: str
    workers: int

    def default_threads(self) -> int:
        """Threads per worker when the caller names none (local: the host's cores / workers; ray: 1).
        Name them for outcomes identical across executors: the arithmetic can depend on them."""

    def map_many(self, batches: list["Batch"]) -> Iterator[tuple[int, EpisodeResult]]:
        """One EpisodeResult per job of every batch (one policy's episodes each), on the same workers:
        (batch index, EpisodeResult) in completion order. Jobs are interleaved across the batches; a worker builds each policy it
        meets once and keeps only the policies of this call. Every batch names the same threads."""

    def map_calls(self, fn: Callable[[Any], Any], items: list) -> Iterator[Any]:
        """fn(item) for every item on the workers (fn importable, items picklable), in completion
        order (a sweep's candidates)."""

    def close(self) -> None:
        """Release workers and any cluster this executor started."""

    def describe(self) -> dict:
        """What the result records about the executor (kind, workers, address)."""


_WORKERS: dict[str, EpisodeWorker] = {}  # a Pool worker's EpisodeWorkers, by policy key


def _run_any(args: tuple) -> tuple[int, EpisodeResult]:
    index, key, spec, suite_args, threads, keep, task, seed = args
    return index, run_one_of(key, spec, suite_args, threads, keep, _WORKERS, task, seed)


class LocalExecutor:
    """Episodes in this process (workers <= 1) or in `workers` spawned processes."""

    kind = "local"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def default_threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def map_many(self, batches: list[Batch]) -> Iterator[tuple[int, EpisodeResult]]:
        threads = same_threads(batches)
        keys = tuple(b.key for b in batches)
        calls = [(i, keys[i], batches[i].spec, batches[i].suite_args, threads, keys, *job)
                 for i, job in interleave(batches)]
        if not calls:
            return
        if self.workers <= 1:
            workers: dict[str, EpisodeWorker] = {}
            for i, key, spec, suite_args, th, keep, task, seed in calls:
                yield i, run_one_of(key, spec, suite_args, th, keep, workers, task, seed)
            return
        with mp.get_context("spawn").Pool(self.workers) as pool:
            yield from pool.imap_unordered(_run_any, calls)

    def map_calls(self, fn: Callable[[Any], Any], items: list) -> Iterator[Any]:
        if self.workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        with mp.get_context("spawn").Pool(min(self.workers, len(items))) as pool:
            yield from pool.imap_unordered(fn, items)

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers}


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def get_executor(kind: str = "local", workers: int = 1, address: str | None = None, **options) -> Executor:
    """An executor by name. `ray` without Ray installed is a ConfigError saying how to install it."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    if int(workers) < 1:
        raise ConfigError(f"executor workers must be >= 1, got {workers!r}")
    if kind == "local":
        if address:
            raise ConfigError(f"a Ray address ({address!r}) needs the ray executor (--executor ray)")
        return LocalExecutor(workers)
    if not ray_available():
        raise ConfigError(f"the ray executor needs Ray, which is not installed: {RAY_INSTALL}")
    from .ray_executor import RayExecutor

    return RayExecutor(workers, address=address, **options)


class EpisodeJournal:
    """Append-only per-episode records of one evaluation (`OUT.episodes.jsonl` beside `--out OUT`),
    so an interrupted run resumes from the episodes already recorded. The first line names the
    evaluation (policy, suite, suite options, the checkpoint's file sizes and times); a journal of
    another evaluation is ignored and replaced. Episodes are keyed by (task, seed): a resumed run
    with more episodes or another --first-episode reuses exactly the episodes it would run."""

    def __init__(self, path: Path, identity: dict):
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back
        self._fresh = True

    @classmethod
    def beside(cls, out: Path, spec: PolicySpec, suite: str, tasks: list[str] | None,
               suite_options: dict) -> "EpisodeJournal":
        p = Path(spec.path)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        stamp = {str(f.relative_to(p) if p.is_dir() else f.name): [f.stat().st_size, f.stat().st_mtime_ns]
                 for f in files if f.is_file()}
        identity = {"policy": asdict(spec), "suite": suite, "tasks": tasks, "suite_options": suite_options,
                    "files": stamp}
        return cls(Path(out).with_suffix(".episodes.jsonl"), identity)

    def load(self) -> list[EpisodeResult]:
        """The episodes recorded by an earlier run of this evaluation ([] if none, or another's)."""
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = text.splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = {}
        if head.get("evaluation") != self.identity:
            return []
        out: dict[tuple[str, int], EpisodeResult] = {}
        clean = text.endswith("\n")
        for line in lines[1:]:
            try:
                r = EpisodeResult(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                clean = False  # a line cut short by the interruption
                continue
            out[(r.task, r.seed)] = r
        if not clean:  # rewrite the good records, so new ones never land on a torn line
            self.path.write_text("".join(json.dumps(x) + "\n" for x in
                                         [head, *(asdict(r) for r in out.values())]))
        self._fresh = False
        return list(out.values())

    def append(self, r: EpisodeResult) -> None:
        if self._fresh:  # first write of a new journal: its header, replacing any other evaluation's
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"evaluation": self.identity}) + "\n")
            self._fresh = False
        with self.path.open("a") as f:
            f.write(json.dumps(asdict(r)) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
