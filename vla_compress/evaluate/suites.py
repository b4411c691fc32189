"""Evaluation suites: a named set of tasks, each with seeded environments.

A suite gives the evaluator tasks, seeds and environments; nothing else in the evaluator
knows about MetaWorld, so LIBERO (or a user's suite) plugs in by registering here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import ConfigError
from .metaworld_env import MT10_TASKS, CameraSpec, MetaWorldEnv
from .seeds import eval_seed


class Env(Protocol):
    instruction: str

    def reset(self, seed: int) -> tuple[dict, object]: ...
    def step(self, action) -> tuple[dict, object, bool, bool]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Suite:
    name: str
    tasks: tuple[str, ...]
    # make_env(task, cameras=None): cameras are the names the policy reads (None: the suite's default)
    make_env: Callable[..., Env] = field(repr=False, compare=False)
    seed_fn: Callable[[str, int], int] = field(repr=False, compare=False)

    def seeds(self, task: str, episodes: int, first: int = 0) -> list[int]:
        """The seeds of episodes first .. first+episodes-1 (first > 0: fresh seeds beside an earlier run's)."""
        return [self.seed_fn(task, i) for i in range(first, first + episodes)]


def _metaworld(tasks: tuple[str, ...], name: str, camera: str = "corner", size: int = 128, max_steps: int = 300) -> Suite:
    def make_env(task: str, cameras: tuple[str, ...] | None = None) -> MetaWorldEnv:
        return MetaWorldEnv(task, tuple(CameraSpec(c, size) for c in (cameras or (camera,))), max_steps)

    return Suite(name, tasks, make_env, eval_seed)


SUITES: dict[str, Callable[..., Suite]] = {
    "metaworld-mt10": lambda **kw: _metaworld(MT10_TASKS, "metaworld-mt10", **kw),
}


def get_suite(name: str, tasks: list[str] | None = None, **kwargs) -> Suite:
    """A suite by name, optionally restricted to some of its tasks."""
    if name not in SUITES:
        raise ConfigError(f"unknown evaluation suite {name!r}; known: {', '.join(SUITES)}")
    suite = SUITES[name](**kwargs)
    if tasks:
        unknown = [t for t in tasks if t not in suite.tasks]
        if unknown:
            raise ConfigError(f"suite {name!r} has no task(s) {unknown}; it has {list(suite.tasks)}")
        suite = Suite(suite.name, tuple(tasks), suite.make_env, suite.seed_fn)
    return suite
