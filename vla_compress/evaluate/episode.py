"""One closed-loop episode, and what a worker holds to run episodes.

A `PolicySpec` says how to build a policy in any process (ONNX sessions and llama.cpp contexts do
not pickle, so policies are never shipped); an `EpisodeWorker` builds it once, with its threads
pinned, and runs seeded episodes; `run_episode` is one of them. The executors (executor.py:
local processes, ray_executor.py: Ray actors) hold EpisodeWorkers; rollout.py asks an executor.
A `Batch` is one policy's episodes when several are evaluated together (Executor.map_many); a
worker then holds one EpisodeWorker per policy (`run_one_of`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError
from .suites import get_suite


@dataclass(frozen=True)
class PolicySpec:
    """How to build a policy in any process: a runtime name and its arguments."""

    runtime: str  # a backend name or alias (vla_compress/backends.py): torch, onnxruntime (onnx), llama.cpp, tensorrt
    path: str
    options: dict = field(default_factory=dict)

    def build(self):
        from ..runtime.registry import build_policy

        return build_policy(self)


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    inferences: int
    mean_infer_ms: float
    wall_s: float


def run_episode(policy, env, seed: int, max_steps: int | None = None) -> EpisodeResult:
    t0 = time.perf_counter()
    obs, _ = env.reset(seed)
    policy.reset()
    n0 = len(policy.latencies_s)
    success, steps = False, 0
    limit = max_steps or getattr(env, "max_steps", 300)
    try:
        for steps in range(1, limit + 1):
            obs, _, success, done = env.step(policy.act(obs))
            if done:
                break
    finally:
        env.close()
    lat = policy.latencies_s[n0:]
    return EpisodeResult(env.task if hasattr(env, "task") else "", int(seed), bool(success), steps, len(lat),
                         float(np.mean(lat) * 1000) if lat else 0.0, time.perf_counter() - t0)


class EpisodeWorker:
    """What one worker holds: its policy (built once from the spec), the suite and the cameras the
    policy reads. Used by the local executor's processes and by every Ray actor."""

    def __init__(self, spec: PolicySpec, suite_args: dict, threads: int):
        import warnings

        import torch

        from ..notices import route_if_inherited

        route_if_inherited()  # a worker of the CLI keeps third-party notices off the terminal, as the CLI does
        # gymnasium's passive checker warns on every MetaWorld reset/step (observation bounds); not ours to fix
        warnings.filterwarnings("ignore", module="gymnasium")
        torch.set_num_threads(threads)
        self.policy = spec.build()
        self.suite = get_suite(**suite_args)
        self.cameras = self.suite.policy_cameras(self.policy)

    def run(self, task: str, seed: int) -> EpisodeResult:
        return run_episode(self.policy, self.suite.make_env(task, self.cameras), seed)


Job = tuple[str, int]  # (task, seed)


@dataclass(frozen=True)
class Batch:
    """One policy's episodes in a map_many call."""

    spec: PolicySpec
    suite_args: dict
    threads: int
    jobs: tuple[Job, ...]

    @property
    def key(self) -> str:
        return json.dumps([asdict(self.spec), self.suite_args, self.threads], sort_keys=True, default=str)


def interleave(batches: list[Batch]) -> list[tuple[int, Job]]:
    """(batch index, job), one job of every batch in turn, so every policy's episodes advance together."""
    out, longest = [], max((len(b.jobs) for b in batches), default=0)
    for i in range(longest):
        out.extend((bi, b.jobs[i]) for bi, b in enumerate(batches) if i < len(b.jobs))
    return out


def same_threads(batches: list[Batch]) -> int:
    threads = {b.threads for b in batches}
    if len(threads) > 1:  # torch's and OpenMP's thread pools are per process: one count per worker
        raise ConfigError(f"policies evaluated together must use the same threads per worker, got {sorted(threads)}")
    return threads.pop() if threads else 1


def run_one_of(key: str, spec: PolicySpec, suite_args: dict, threads: int, keep: tuple[str, ...],
               workers: dict[str, EpisodeWorker], task: str, seed: int) -> EpisodeResult:
    """An episode of the policy `key`, built on first use into `workers`; policies not in `keep` are
    dropped first (a worker holds only the policies of the current call)."""
    for k in [k for k in workers if k not in keep]:
        del workers[k]
    if key not in workers:
        workers[key] = EpisodeWorker(spec, suite_args, threads)
    return workers[key].run(task, seed)
