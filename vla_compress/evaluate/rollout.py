"""Closed-loop evaluation: run a Policy for N seeded episodes per task, in worker processes.

Policies are not shipped to workers as objects (ONNX sessions and llama.cpp contexts do not
pickle); a `PolicySpec` says how to build one, and each worker builds its own once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .stats import wilson_interval
from .metaworld_env import cameras_read_by
from .suites import Suite, get_suite


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


_WORKER: dict[str, Any] = {}


def _init_worker(spec: PolicySpec, suite_args: dict, threads: int) -> None:
    import warnings

    import torch

    # gymnasium's passive checker warns on every MetaWorld reset/step (observation bounds); not ours to fix
    warnings.filterwarnings("ignore", module="gymnasium")

    torch.set_num_threads(threads)
    _WORKER["policy"] = spec.build()
    _WORKER["suite"] = get_suite(**suite_args)
    _WORKER["cameras"] = cameras_read_by(_WORKER["policy"])


def _run_job(job: tuple[str, int]) -> EpisodeResult:
    task, seed = job
    return run_episode(_WORKER["policy"], _WORKER["suite"].make_env(task, _WORKER["cameras"]), seed)


def evaluate(spec: PolicySpec, suite_name: str = "metaworld-mt10", tasks: list[str] | None = None,
             episodes: int = 10, workers: int = 1, threads_per_worker: int | None = None,
             on_episode: Callable[[EpisodeResult, int, int], None] | None = None, first_episode: int = 0,
             **suite_kwargs) -> dict:
    """Evaluate a policy on a suite; returns the full result dict (per task, per episode).

    Episodes first_episode .. first_episode+episodes-1 of every task (their seeds are fixed)."""
    suite = get_suite(suite_name, tasks, **suite_kwargs)
    seeds = {t: suite.seeds(t, episodes, first_episode) for t in suite.tasks}
    # interleave tasks so a partial run (and the progress bar) covers every task early
    jobs = [(t, seeds[t][i]) for i in range(episodes) for t in suite.tasks]
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, workers))
    suite_args = {"name": suite_name, "tasks": list(suite.tasks), **suite_kwargs}
    results: list[EpisodeResult] = []
    t0 = time.time()
    if workers <= 1:
        _init_worker(spec, suite_args, threads)
        for job in jobs:
            results.append(_run_job(job))
            if on_episode:
                on_episode(results[-1], len(results), len(jobs))
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(spec, suite_args, threads)) as pool:
            for r in pool.imap_unordered(_run_job, jobs):
                results.append(r)
                if on_episode:
                    on_episode(r, len(results), len(jobs))
    result = summarize(results, suite, spec, episodes, workers, time.time() - t0, first_episode)
    result["suite_options"] = dict(suite_kwargs)  # e.g. max_steps: part of the protocol, compare like with like
    return result


def summarize(results: list[EpisodeResult], suite: Suite, spec: PolicySpec | None, episodes: int,
              workers: int, wall_s: float, first_episode: int = 0) -> dict:
    order = {(t, s): i for i, (t, s) in enumerate((t, s) for t in suite.tasks
                                                  for s in suite.seeds(t, episodes, first_episode))}
    results = sorted(results, key=lambda r: order.get((r.task, r.seed), 0))
    per_task = {}
    for task in suite.tasks:
        rs = [r for r in results if r.task == task]
        k = sum(r.success for r in rs)
        lo, hi = wilson_interval(k, len(rs))
        per_task[task] = {
            "episodes": len(rs), "successes": k, "success_rate": k / len(rs) if rs else 0.0,
            "ci95": [lo, hi], "mean_steps": float(np.mean([r.steps for r in rs])) if rs else 0.0,
            "mean_steps_success": float(np.mean([r.steps for r in rs if r.success])) if k else None,
        }
    total = sum(r.success for r in results)
    lo, hi = wilson_interval(total, len(results))
    lat = [r.mean_infer_ms for r in results if r.inferences]
    return {
        "suite": suite.name,
        "policy": asdict(spec) if spec else None,
        "episodes_per_task": episodes,
        "first_episode": first_episode,
        "mean_success": float(np.mean([v["success_rate"] for v in per_task.values()])) if per_task else 0.0,
        "pooled": {"episodes": len(results), "successes": total, "ci95": [lo, hi]},
        "per_task": per_task,
        "latency_ms": {"mean_per_inference": float(np.mean(lat)) if lat else None,
                       "p50": float(np.median(lat)) if lat else None},
        "workers": workers,
        "wall_s": round(wall_s, 1),
        "episodes": [asdict(r) for r in results],
    }
