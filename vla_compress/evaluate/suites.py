"""Evaluation suites: a named set of tasks, each with seeded environments.

A suite gives the evaluator tasks, seeds and environments; nothing else in the evaluator
knows about MetaWorld, so LIBERO (or a user's suite) plugs in by registering here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    # the camera names of a policy that make_env is given (None: the MetaWorld cameras it reads)
    cameras_of: Callable[[object], tuple[str, ...] | None] | None = field(default=None, repr=False, compare=False)
    # what a verdict on this suite was measured on: package, version, conventions, fidelity
    facts: Callable[[], dict] | None = field(default=None, repr=False, compare=False)

    def policy_cameras(self, policy: object) -> tuple[str, ...] | None:
        from .metaworld_env import cameras_read_by

        return (self.cameras_of or cameras_read_by)(policy)

    def describe(self) -> dict:
        """The suite's facts (recorded with every evaluation on it)."""
        return {"name": self.name, **(self.facts() if self.facts else {})}

    def seeds(self, task: str, episodes: int, first: int = 0) -> list[int]:
        """The seeds of episodes first .. first+episodes-1 (first > 0: fresh seeds beside an earlier run's)."""
        return [self.seed_fn(task, i) for i in range(first, first + episodes)]


def _metaworld(tasks: tuple[str, ...], name: str, camera: str = "corner", size: int = 128, max_steps: int = 300) -> Suite:
    def make_env(task: str, cameras: tuple[str, ...] | None = None) -> MetaWorldEnv:
        return MetaWorldEnv(task, tuple(CameraSpec(c, size) for c in (cameras or (camera,))), max_steps)

    return Suite(name, tasks, make_env, eval_seed, facts=lambda: _metaworld_facts(camera, size, max_steps))


def _metaworld_facts(camera: str, size: int, max_steps: int) -> dict:
    import metaworld

    return {"package": "metaworld", "version": getattr(metaworld, "__version__", "unknown"),
            "conventions": {"camera": camera, "size": size, "max_steps": max_steps, "state": "observation[:4]",
                            "seeds": "evaluate/seeds.py eval_seed", "renderer": "mujoco.Renderer, no shadows/reflections"},
            "fidelity": "the project's own conventions (the reference policy was trained on them)"}


def _lerobot_metaworld(tasks: tuple[str, ...], max_steps: int | None = None) -> Suite:
    from . import lerobot_metaworld as lm

    def make_env(task: str, cameras: tuple[str, ...] | None = None) -> lm.LeRobotMetaWorldEnv:
        return lm.LeRobotMetaWorldEnv(task, lm.camera_key_for(cameras), max_steps or lm.MAX_STEPS)

    return Suite("lerobot-metaworld", tasks, make_env, lm.seed_for, cameras_of=lm.policy_cameras, facts=lm.facts)


SUITES: dict[str, Callable[..., Suite]] = {
    "metaworld-mt10": lambda **kw: _metaworld(MT10_TASKS, "metaworld-mt10", **kw),
    # LeRobot 0.6's MetaworldEnv conventions (evaluate/lerobot_metaworld.py), MT10's tasks
    "lerobot-metaworld": lambda **kw: _lerobot_metaworld(MT10_TASKS, **kw),
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
        suite = replace(suite, tasks=tuple(tasks))
    return suite
