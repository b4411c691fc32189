"""Seed ranges: demonstrations and evaluation never share a placement.

Each MetaWorld placement is a pure function of its seed (see MetaWorldEnv). Task t's demos use
seeds in [t*1000, t*1000+1000); evaluation uses the same layout shifted by EVAL_SEED_BASE.
"""

from __future__ import annotations

from .metaworld_env import MT10_TASKS

EVAL_SEED_BASE = 1_000_000


def _task_index(task: str) -> int:
    return MT10_TASKS.index(task) if task in MT10_TASKS else (sum(map(ord, task)) % 997) + 10


def demo_seed(task: str, i: int) -> int:
    if not 0 <= i < 1000:
        raise ValueError(f"demo index {i} out of range [0, 1000)")
    return _task_index(task) * 1000 + i


def eval_seed(task: str, i: int) -> int:
    if not 0 <= i < 1000:
        raise ValueError(f"episode index {i} out of range [0, 1000)")
    return EVAL_SEED_BASE + _task_index(task) * 1000 + i
