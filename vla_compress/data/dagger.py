"""DAgger data: states the learned policy reaches, labelled with the scripted expert's actions.

Behaviour cloning only sees states along expert trajectories; a policy's small errors take it
off them, where it has never been taught (compounding error). MetaWorld's scripted experts act
from the simulator state, so they can label any state: roll the policy out (at each step the
expert's action is executed instead with probability `beta`), record every frame with the
expert's action as its label, and train on demonstrations plus these episodes (Ross et al.,
2011). Episodes are written in the same LeRobot v3 layout as the demonstrations, with
`extras["dagger"]` recording beta, the policy and whether the episode succeeded.

Seeds: demo indices from `start_index` (default 500), disjoint from the training demos (0..),
the pipeline's calibration/validation episodes (900.., 950..) and every evaluation seed.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..evaluate.metaworld_env import CONTROL_HZ, MT10_TASKS, CameraSpec, cameras_read_by
from ..evaluate.seeds import demo_seed
from .collect import labelled_episode
from .lerobot import Episode, LeRobotWriter


def dagger_episode(policy: Any, task: str, seed: int, cameras: tuple[CameraSpec, ...], beta: float,
                   rng: np.random.Generator, max_steps: int = 300) -> Episode:
    """One rollout of `policy` (expert action executed instead with probability beta), every frame
    labelled with the expert's action (clipped to [-1, 1], as the environment executes it)."""
    policy.reset()
    expert_steps = 0

    def act(obs: dict, label: np.ndarray) -> np.ndarray:
        nonlocal expert_steps
        action = policy.act(obs)  # every step, so the policy's chunk queue stays in step
        if rng.random() < beta:
            expert_steps += 1
            return label
        return action

    ep = labelled_episode(task, seed, cameras, max_steps, act)
    ep.extras["dagger"] = {"beta": beta, "expert_steps": expert_steps}
    return ep


_WORKER: dict[str, Any] = {}


def _init(spec: Any, threads: int) -> None:
    import warnings

    import torch

    from ..notices import route_if_inherited

    route_if_inherited()
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    torch.set_num_threads(threads)
    _WORKER["policy"] = spec.build()


def _job(args: tuple) -> Episode:
    task, seed, cams, beta, max_steps = args
    return dagger_episode(_WORKER["policy"], task, seed, tuple(CameraSpec(n, s) for n, s in cams), beta,
                          np.random.default_rng(seed), max_steps)


def collect_dagger(spec: Any, out: str | Path, tasks: tuple[str, ...] = MT10_TASKS,
                   episodes_per_task: int | dict[str, int] = 10, beta: float = 0.0, workers: int = 2,
                   start_index: int = 500, image_size: int = 128, max_steps: int = 300, overwrite: bool = False,
                   on_episode: Callable[[Episode], None] | None = None) -> Path:
    """Roll out the policy `spec` (an evaluate.rollout.PolicySpec) on demo seeds from `start_index`
    and write every episode, failed ones included (their states are the ones that need labels)."""
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta must be in [0, 1] (the probability of executing the expert's action), got {beta}")
    want = {t: (episodes_per_task[t] if isinstance(episodes_per_task, dict) else episodes_per_task) for t in tasks}
    if start_index + max(want.values(), default=0) > 900:
        raise ConfigError("DAgger seeds would reach the calibration/validation range (demo index 900..); "
                          "lower start_index or episodes_per_task")
    policy = spec.build()  # fails here, in this process, on a bad checkpoint
    names = cameras_read_by(policy) or (CameraSpec().name,)
    cams = tuple((n, image_size) for n in names)
    jobs = [(t, demo_seed(t, start_index + i), cams, beta, max_steps) for t in tasks for i in range(want[t])]
    writer = LeRobotWriter(out, fps=CONTROL_HZ, robot_type="sawyer", overwrite=overwrite)
    threads = 1 if workers > 1 else 2
    with mp.get_context("spawn").Pool(max(1, workers), initializer=_init, initargs=(spec, threads)) as pool:
        for ep in pool.imap(_job, jobs):
            ep.extras["dagger"]["policy"] = str(spec.path)
            writer.add(ep)
            if on_episode is not None:
                on_episode(ep)
    return writer.close()
