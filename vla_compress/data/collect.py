"""Collect scripted-expert demonstrations from MetaWorld into a LeRobot v3 dataset.

Seeds: demo seeds for task t are `DEMO_SEED_BASE + 1000*t + i`; evaluation seeds live in a
disjoint range (see `vla_compress.evaluate.seeds`), so a closed-loop success rate is never
measured on a placement the policy was trained on.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Callable

import numpy as np

from ..evaluate.metaworld_env import CONTROL_HZ, MT10_TASKS, CameraSpec, MetaWorldEnv, camera_specs
from ..evaluate.seeds import demo_seed
from .lerobot import Episode, LeRobotWriter


def labelled_episode(task: str, seed: int, camera: CameraSpec | tuple[CameraSpec, ...], max_steps: int = 300,
                     act: Callable[[dict, np.ndarray], np.ndarray] | None = None) -> Episode:
    """Roll out one MetaWorld episode with every frame labelled by the scripted expert's action
    (clipped to [-1, 1], what the env executes). `act(obs, label)` returns the action executed at
    each step; without it the label is executed, i.e. an expert demonstration."""
    env = MetaWorldEnv(task, camera, max_steps)  # selects the GL backend before metaworld imports mujoco
    from metaworld.policies import ENV_POLICY_MAP

    expert = ENV_POLICY_MAP[task]()
    obs, raw = env.reset(seed)
    cams = env.cameras
    frames: dict[str, list] = {c.name: [] for c in cams}
    states, labels = [], []
    success = False
    try:
        for _ in range(max_steps):
            label = np.clip(expert.get_action(raw), -1.0, 1.0).astype(np.float32)
            for c in cams:
                frames[c.name].append(obs["images"][c.name])
            states.append(obs["state"])
            labels.append(label)
            obs, raw, success, done = env.step(label if act is None else act(obs, label))
            if done:
                break
    finally:
        env.close()
    return Episode(
        task=env.instruction,
        images={name: np.stack(f) for name, f in frames.items()},
        state=np.stack(states),
        action=np.stack(labels),
        extras={"env_task": task, "seed": int(seed), "success": bool(success)},
    )


def expert_episode(task: str, seed: int, camera: CameraSpec | tuple[CameraSpec, ...], max_steps: int = 300) -> Episode:
    """Roll out MetaWorld's scripted expert once; actions are stored clipped to [-1, 1] (what the env executes)."""
    return labelled_episode(task, seed, camera, max_steps)


def _worker(args: tuple) -> Episode:
    import warnings

    # gymnasium's passive checker and MetaWorld's experts warn on every step; not actionable here
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="metaworld")
    task, seed, cams, max_steps = args
    return expert_episode(task, seed, tuple(CameraSpec(n, s) for n, s in cams), max_steps)


def collect(
    out: str | Path,
    tasks: tuple[str, ...] = MT10_TASKS,
    episodes_per_task: int | dict[str, int] = 50,
    camera: CameraSpec | tuple[CameraSpec, ...] = CameraSpec(),
    workers: int = 2,
    max_steps: int = 300,
    overwrite: bool = False,
    on_episode: Callable[[Episode], None] | None = None,
    start_index: int = 0,
) -> Path:
    """Collect successful expert episodes per task (failed expert runs are skipped, their seeds not reused).
    Demo seed indices start at `start_index` (training demos use 0..; the pipeline's calibration and
    validation episodes use 900.. and 950.., so they never share a placement with training data)."""
    cams = tuple((c.name, c.size) for c in camera_specs(camera))
    want = {t: (episodes_per_task[t] if isinstance(episodes_per_task, dict) else episodes_per_task) for t in tasks}
    writer = LeRobotWriter(out, fps=CONTROL_HZ, robot_type="sawyer", overwrite=overwrite)
    next_i = {t: start_index for t in tasks}
    got = {t: 0 for t in tasks}
    ctx = mp.get_context("spawn")
    from ..notices import route_if_inherited

    with ctx.Pool(workers, initializer=route_if_inherited) as pool:
        while any(got[t] < want[t] for t in tasks):
            jobs = []
            for t in tasks:
                missing = want[t] - got[t]
                # ask for a few extra: the experts fail ~3% of the time (peg-insert-side ~20%)
                for _ in range(missing + (1 if missing > 3 else 0)):
                    jobs.append((t, demo_seed(t, next_i[t]), cams, max_steps))
                    next_i[t] += 1
            for ep in pool.imap(_worker, jobs):
                t = ep.extras["env_task"]
                if ep.extras["success"] and got[t] < want[t]:
                    writer.add(ep)
                    got[t] += 1
                if on_episode is not None:
                    on_episode(ep)
    return writer.close()
