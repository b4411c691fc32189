"""The Policy interface the evaluator and the profiler see, and its torch implementation.

A policy step (`infer`) turns one observation into an action chunk; `act` serves actions from
a queue and runs a new step only when the queue is empty (LeRobot's `select_action`
semantics with `n_action_steps` = the chunk size unless told otherwise). Each inference
records its wall time so closed-loop latency comes from the same runs as success.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np


def open_artifact(artifact_dir: Any, fmt: str, runtime: str, needs: str, allow_failed: bool = False,
                  verify: bool = False) -> tuple[Any, Any]:
    """(artifact, its processor) for a runtime that runs `fmt` artifacts: refuses another format and,
    unless `allow_failed`, an artifact that failed validation; `verify` re-checks file hashes."""
    from ..errors import ConfigError
    from ..export.artifact import Artifact
    from ..export.family import load_artifact_processor

    art = Artifact.load(artifact_dir)
    if art.format != fmt:
        raise ConfigError(f"{art.path}: artifact format is {art.format!r}, the {runtime!r} runtime needs {needs}")
    art.require_usable(allow_failed)
    if verify:
        art.verify_files()
    return art, load_artifact_processor(art.manifest["model"]["family"], art.path)


def artifact_options(options: dict, name: str) -> dict:
    """The PolicySpec options every artifact policy takes: execute_steps, allow_failed, verify, name."""
    return {"execute_steps": options.get("execute_steps"), "allow_failed": options.get("allow_failed", False),
            "verify": options.get("verify", False), "name": options.get("name", name)}


def with_frames(observation: dict) -> dict:
    """The observation with its images as a plain dict: a simulator may hand frames that render on
    first read (evaluate/metaworld_env.py StepFrames); a policy step reads them all first, so rendering
    is never counted as inference time."""
    images = observation.get("images")
    if isinstance(images, Mapping) and not isinstance(images, dict):
        return {**observation, "images": {k: images[k] for k in images}}
    return observation


class Policy:
    """Base class: subclasses implement `infer(observation) -> (K, A) actions in robot units`."""

    name: str = "policy"
    runtime: str = "unknown"

    def __init__(self, execute_steps: int | None = None):
        self.execute_steps = execute_steps
        self._queue: deque[np.ndarray] = deque()
        self.latencies_s: list[float] = []

    def infer(self, observation: dict) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget queued actions (call at every episode start)."""
        self._queue.clear()

    def act(self, observation: dict) -> np.ndarray:
        if not self._queue:
            observation = with_frames(observation)  # lazily rendered frames: rendered before the clock starts
            t0 = time.perf_counter()
            chunk = np.asarray(self.infer(observation), dtype=np.float32)
            self.latencies_s.append(time.perf_counter() - t0)
            n = len(chunk) if self.execute_steps is None else min(self.execute_steps, len(chunk))
            self._queue.extend(chunk[:n])
        return self._queue.popleft()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime}


class TorchPolicy(Policy):
    """Runs a VLA adapter in PyTorch on the CPU (or the GPU it was moved to)."""

    runtime = "torch"

    def __init__(self, vla, execute_steps: int | None = None, threads: int | None = None, name: str = "torch"):
        super().__init__(execute_steps)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.vla = vla.eval()
        self.name = name

    @classmethod
    def from_spec(cls, spec: Any) -> "TorchPolicy":
        """The checkpoint at `spec.path`, loaded (options: allow_pickle, execute_steps, name)."""
        from ..models import load_vla

        o = spec.options
        return cls(load_vla(spec.path, allow_pickle=o.get("allow_pickle", False)), execute_steps=o.get("execute_steps"),
                   name=o.get("name", "torch"))

    def infer(self, observation: dict) -> np.ndarray:
        return self.vla.act(observation)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(family=self.vla.family, action_spec=self.vla.action_spec.to_dict())
        return d
