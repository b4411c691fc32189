"""Closed-loop evaluation: run a Policy for N seeded episodes per task, on an executor's workers.

Policies are not shipped to workers as objects (ONNX sessions and llama.cpp contexts do not
pickle); a `PolicySpec` says how to build one, and each worker builds its own once
(evaluate/executor.py: local processes or Ray actors).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import numpy as np

from .episode import EpisodeResult, PolicySpec, run_episode  # noqa: F401 (imported from here by callers)
from .executor import Executor, LocalExecutor
from .stats import wilson_interval
from .suites import Suite, get_suite


def evaluate(spec: PolicySpec, suite_name: str = "metaworld-mt10", tasks: list[str] | None = None,
             episodes: int = 10, workers: int = 1, threads_per_worker: int | None = None,
             on_episode: Callable[[EpisodeResult, int, int], None] | None = None, first_episode: int = 0,
             executor: Executor | None = None, completed: list[EpisodeResult] | None = None, **suite_kwargs) -> dict:
    """Evaluate a policy on a suite; returns the full result dict (per task, per episode).

    Episodes first_episode .. first_episode+episodes-1 of every task (their seeds are fixed), run by
    `executor` (evaluate/executor.py; default: the local one with `workers` processes). `completed`:
    episodes already recorded by an interrupted run of the same evaluation; they are not run again."""
    return evaluate_many([spec], suite_name, tasks, episodes, workers, threads_per_worker,
                         (lambda _i, r, done, total: on_episode(r, done, total)) if on_episode else None,
                         first_episode, executor, [completed or []], **suite_kwargs)[0]


def evaluate_many(specs: list[PolicySpec], suite_name: str = "metaworld-mt10", tasks: list[str] | None = None,
                  episodes: int = 10, workers: int = 1, threads_per_worker: int | None = None,
                  on_episode: Callable[[int, EpisodeResult, int, int], None] | None = None, first_episode: int = 0,
                  executor: Executor | None = None, completed: list[list[EpisodeResult]] | None = None,
                  **suite_kwargs) -> list[dict]:
    """Evaluate several policies at once on the same episodes (tasks and seeds), their jobs
    interleaved on the executor's workers (Executor.map_many); one result per spec, each as
    evaluate() returns it (with several, the wall time is their shared one).
    on_episode(spec index, r, done, total); `completed`: per spec, episodes already recorded."""
    from .executor import Batch

    executor = executor or LocalExecutor(workers)
    suite = get_suite(suite_name, tasks, **suite_kwargs)
    seeds = {t: suite.seeds(t, episodes, first_episode) for t in suite.tasks}
    # interleave tasks so a partial run (and the progress bar) covers every task early
    jobs = [(t, seeds[t][i]) for i in range(episodes) for t in suite.tasks]
    wanted = set(jobs)
    results = [[r for r in done if (r.task, r.seed) in wanted] for done in (completed or [[] for _ in specs])]
    resumed = [len(rs) for rs in results]
    left = [tuple(j for j in jobs if j not in {(r.task, r.seed) for r in rs}) for rs in results]
    threads = threads_per_worker or executor.default_threads()
    suite_args = {"name": suite_name, "tasks": list(suite.tasks), **suite_kwargs}
    t0 = time.time()
    for i, r in executor.map_many([Batch(s, suite_args, threads, js) for s, js in zip(specs, left)]):
        results[i].append(r)
        if on_episode:
            on_episode(i, r, len(results[i]), len(jobs))
    wall = time.time() - t0
    out = []
    for spec, rs, n_resumed in zip(specs, results, resumed):
        result = summarize(rs, suite, spec, episodes, executor.workers, wall, first_episode)
        result["suite_options"] = dict(suite_kwargs)  # e.g. max_steps: part of the protocol, compare like with like
        if len(specs) > 1:
            result["evaluated_with"] = len(specs)  # policies sharing the workers (wall_s is theirs together)
        if executor.kind != "local":
            result["executor"] = executor.describe()
        if n_resumed:
            result["resumed_episodes"] = n_resumed
        out.append(result)
    return out


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
        "suite_facts": suite.describe(),
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
