"""The Ray executor: episodes on Ray actors, on a local cluster or an existing one.

Each actor is one worker: it builds each policy it runs once from the artifact path (as the local
executor's processes do), with torch / OpenMP threads pinned, and runs one episode per call. The
driver keeps one job in flight per actor and hands the next job to whichever actor finishes first.
Several policies can be evaluated at once (map_many: a compress run's variants share the actors,
their jobs interleaved); an actor keeps only the policies of the current call. The actors outlive
one evaluation: the next one (a sequential round, a rerun) reuses them and the policies they built;
close() ends them.

A lost worker (the actor or its node died) is not a failure of the policy: its episode is re-run on
a fresh actor, and after `max_retries` losses of the same episode the evaluation stops with an
ExecutorError. An exception raised by the policy or the simulator inside an actor is re-raised in the
driver (a VLACompressError with its class and message) and never retried: the same episode would
fail the same way again.

Outcomes equal the local executor's for the same seeds, with the same threads per worker (the
policy's arithmetic, and with it the closed loop, can depend on the thread count).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from typing import Any, Iterator

from ..errors import ExecutorError, VLACompressError
from ..notices import ENV_FLAG
from .episode import Batch, EpisodeResult, EpisodeWorker, Job, PolicySpec, interleave, run_one_of, same_threads

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _EpisodeActor:
    """Ray actor body: one EpisodeWorker per policy it runs, built on first use (an error there is the
    policy's and reaches the driver as that error, not as a lost actor); it keeps only the policies
    of the current evaluation (`keep`)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.workers: dict[str, EpisodeWorker] = {}

    def run(self, key: str, spec: PolicySpec, suite_args: dict, keep: tuple[str, ...], task: str,
            seed: int) -> EpisodeResult | tuple[str, str, str]:
        try:
            return run_one_of(key, spec, suite_args, self.threads, keep, self.workers, task, seed)
        except VLACompressError as e:  # (class, message): these take their own arguments, so do not unpickle
            return (type(e).__module__, type(e).__qualname__, str(e))

    def where(self) -> dict:
        """This actor's process and Ray node (for benchmarks and debugging placement)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def _lost_worker_errors(ray) -> tuple[type, ...]:
    ex = ray.exceptions
    names = ("RayActorError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
             "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


def _rebuild(module: str, qualname: str, message: str) -> VLACompressError:
    """The worker's VLACompressError in the driver: same class, same one-line message."""
    import importlib

    cls = getattr(importlib.import_module(module), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, VLACompressError)):
        return VLACompressError(message)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


class RayExecutor:
    """`workers` actors (one CPU each) on a local cluster started on first use (`num_cpus=workers`)
    or on the cluster at `address` (`ray start --head` prints it; "auto" finds a local one)."""

    kind = "ray"

    def __init__(self, workers: int = 1, address: str | None = None, max_retries: int = 3):
        self.workers = max(1, int(workers))
        self.address = address
        self.max_retries = max_retries
        self.started = False  # this executor started (and will shut down) the Ray session
        self.actors: list[Any] = []  # the live actors (tests kill one); kept for the next evaluation
        self._pool_key: str | None = None  # their threads per worker
        self.lost = 0  # workers lost so far, over every evaluation of this executor

    def default_threads(self) -> int:
        return 1  # one actor per CPU the cluster schedules it on

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers, "address": self.address}

    def _ray(self):
        import ray

        if not ray.is_initialized():
            quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                     "configure_logging": False}
            if self.address:
                ray.init(address=self.address, **quiet)
            else:  # "local": a new cluster even if RAY_ADDRESS names another one
                ray.init(address="local", num_cpus=self.workers, **quiet)
            self.started = True
        return ray

    def _pool(self, ray, threads: int):
        """`workers` actors with `threads` threads each: the previous evaluation's (they keep the
        policies they built: sequential rounds, repeated evaluations), else fresh ones. Returns
        new_actor()."""
        env = {v: str(threads) for v in THREAD_VARS}
        if os.environ.get(ENV_FLAG):  # the CLI routes third-party notices to its log: so do the actors
            env[ENV_FLAG] = os.environ[ENV_FLAG]
        remote = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_EpisodeActor)

        def new_actor():
            return remote.options(runtime_env={"env_vars": env}).remote(threads)

        key = json.dumps(threads)
        if key != self._pool_key:
            self._kill_actors()
            self.actors = [new_actor() for _ in range(self.workers)]
            self._pool_key = key
        return new_actor

    def _kill_actors(self) -> None:
        if self.actors:
            import ray

            for a in self.actors:
                ray.kill(a, no_restart=True)
        self.actors, self._pool_key = [], None

    def map_many(self, batches: list[Batch]) -> Iterator[tuple[int, EpisodeResult]]:
        queue: deque[tuple[int, Job]] = deque(interleave(batches))
        if not queue:
            return
        threads = same_threads(batches)
        keys = tuple(b.key for b in batches)
        ray = self._ray()
        lost_errors = _lost_worker_errors(ray)
        new_actor = self._pool(ray, threads)
        attempts: dict[tuple[int, Job], int] = {}
        pending: dict[Any, tuple[int, tuple[int, Job]]] = {}  # object ref -> (actor slot, (batch, job))

        def submit(slot: int) -> None:
            if queue:
                item = queue.popleft()
                b = batches[item[0]]
                ref = self.actors[slot].run.remote(keys[item[0]], b.spec, b.suite_args, keys, *item[1])
                pending[ref] = (slot, item)

        finished = False
        try:
            for slot in range(len(self.actors)):
                submit(slot)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                slot, item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except lost_errors as e:
                    self.lost += 1
                    attempts[item] = attempts.get(item, 0) + 1
                    if attempts[item] > self.max_retries:
                        task, seed = item[1]
                        raise ExecutorError(
                            f"episode {task} seed {seed} lost its Ray worker {attempts[item]} times "
                            f"(last: {type(e).__name__}); the cluster is losing workers, not the policy "
                            f"failing: check `ray status` and the nodes' logs") from None
                    queue.appendleft(item)  # the same episode again, on a fresh actor
                    ray.kill(self.actors[slot], no_restart=True)
                    self.actors[slot] = new_actor()
                    submit(slot)
                    continue
                except ray.exceptions.RayTaskError as e:  # a bug in a worker: its exception, as it was
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                if isinstance(result, tuple):
                    raise _rebuild(*result)
                submit(slot)
                yield item[0], result
            finished = True
        finally:
            if not finished:  # an error, or the caller stopped early: no actor keeps a stale episode
                self._kill_actors()

    def map_calls(self, fn, items: list) -> Iterator[Any]:
        """fn(item) as Ray tasks (one CPU each); a task whose worker died is re-run by Ray up to
        max_retries times, an exception raised by fn is re-raised here as it was."""
        if not items:
            return
        ray = self._ray()
        self._kill_actors()  # idle episode actors would hold the CPUs these tasks need
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(fn)
        pending = [remote.remote(item) for item in items]
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, BaseException) else e) from None

    def close(self) -> None:
        self._kill_actors()
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
