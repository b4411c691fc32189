"""Scene positions for an auxiliary training target, recovered by replaying demonstrations.

A policy trained by behaviour cloning with proprio in its input can reach a low loss while
barely looking: the reference policy trained without this gave the same first action for
every reach goal (its vision path had learnt the arm, not the target). The fix used here is an
auxiliary loss: from the visual tokens alone, predict where the task's object and goal are.
The policy never receives these positions as input, at training or at run time; they only
shape what the vision encoder learns.

The demonstration datasets store images, proprio and actions, not object poses. MetaWorld is
deterministic given the placement seed (recorded in each episode's extras) and the actions, so
replaying an episode's actions without rendering gives every frame's 39-d state back; the
replayed end-effector positions are checked against the recorded proprio, and an episode that
does not reproduce (or has no seed, or executed actions other than the recorded ones, as in
DAgger datasets) gets no target.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

SCENE_DIM = 6  # object position (raw[4:7]) and goal position (raw[36:39])
REPLAY_TOL = 1e-3  # metres: recorded vs replayed end-effector position


def replay_scene(task: str, seed: int, actions: np.ndarray, states: np.ndarray, max_steps: int = 300
                 ) -> np.ndarray | None:
    """(T, 6) object and goal positions at each of the episode's T frames, or None when the replay
    does not reproduce the recorded proprio within REPLAY_TOL."""
    from ..evaluate.metaworld_env import make_gym_env

    env = make_gym_env(task, seed, max_steps)
    try:
        raw, _ = env.reset(seed=int(seed))
        out = np.empty((len(actions), SCENE_DIM), np.float32)
        for t in range(len(actions)):
            if np.abs(raw[:3] - states[t, :3]).max() > REPLAY_TOL:
                return None
            out[t] = np.concatenate([raw[4:7], raw[36:39]])
            if t + 1 < len(actions):
                raw, *_ = env.step(np.clip(actions[t].astype(np.float64), -1.0, 1.0))
        return out
    finally:
        env.close()


def _replay_job(args):
    import warnings

    # gymnasium's passive checker warns on every MetaWorld reset/step (observation bounds); not ours to fix
    warnings.filterwarnings("ignore", module="gymnasium")
    return replay_scene(*args)


def scene_targets(meta: list[dict], episode_of: np.ndarray, actions: np.ndarray, states: np.ndarray,
                  replayable: np.ndarray, workers: int = 2, log: Callable[[str], None] = print
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame scene positions and a mask of the frames that have them.

    `meta[i]` describes episode i (its "env_task" and "seed" extras); `replayable[i]` says whether
    the episode's recorded actions are the ones that were executed (demonstrations: yes; DAgger
    episodes: no, they record the expert's label). Replays run in `workers` processes (creating
    a MetaWorld env costs ~0.7 s here; stepping one without rendering, under 1 ms)."""
    import multiprocessing as mp

    targets = np.zeros((len(actions), SCENE_DIM), np.float32)
    mask = np.zeros(len(actions), bool)
    eps = [i for i, m in enumerate(meta) if replayable[i] and "seed" in m and "env_task" in m]
    rows = {i: np.nonzero(episode_of == i)[0] for i in eps}
    jobs = [(meta[i]["env_task"], int(meta[i]["seed"]), actions[rows[i]], states[rows[i]]) for i in eps]
    t0, bad = time.time(), 0
    if workers > 1 and len(jobs) > 1:
        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_replay_job, jobs, chunksize=4)
    else:
        pool, results = None, map(_replay_job, jobs)
    try:
        for n, (i, pos) in enumerate(zip(eps, results), 1):
            if pos is None:
                bad += 1
            else:
                targets[rows[i]], mask[rows[i]] = pos, True
            if n % 100 == 0:
                log(f"replayed {n}/{len(jobs)} episodes for scene targets ({time.time() - t0:.0f}s)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    log(f"scene targets for {int(mask.sum())}/{len(mask)} frames; {bad} episode(s) did not reproduce")
    return targets, mask
