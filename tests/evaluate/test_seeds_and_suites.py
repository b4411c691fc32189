"""Seed ranges (demos and evaluation never share a placement) and suite lookup."""

from __future__ import annotations

import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.metaworld_env import MT10_TASKS, MetaWorldEnv
from vla_compress.evaluate.seeds import EVAL_SEED_BASE, demo_seed, eval_seed
from vla_compress.evaluate.suites import get_suite


def test_demo_and_eval_seeds_are_disjoint():
    demo = {demo_seed(t, i) for t in MT10_TASKS for i in range(1000)}
    evals = {eval_seed(t, i) for t in MT10_TASKS for i in range(1000)}
    assert len(demo) == len(evals) == 10 * 1000  # no collisions between tasks either
    assert demo.isdisjoint(evals)
    assert max(demo) < EVAL_SEED_BASE <= min(evals)


def test_seed_layout():
    assert demo_seed("reach-v3", 0) == 0
    assert demo_seed("push-v3", 7) == 1007
    assert eval_seed("reach-v3", 0) == EVAL_SEED_BASE
    assert eval_seed("window-close-v3", 999) == EVAL_SEED_BASE + 9999
    # tasks outside MT10 get their own block, away from MT10's first ten
    assert demo_seed("hammer-v3", 0) >= 10_000


@pytest.mark.parametrize("fn", [demo_seed, eval_seed])
@pytest.mark.parametrize("i", [-1, 1000])
def test_seed_index_out_of_range(fn, i):
    with pytest.raises(ValueError, match="out of range"):
        fn("reach-v3", i)


def test_suite_tasks_and_seeds():
    suite = get_suite("metaworld-mt10")
    assert suite.tasks == MT10_TASKS
    assert suite.seeds("push-v3", 3) == [eval_seed("push-v3", i) for i in range(3)]
    assert suite.seeds("push-v3", 2, first=3) == [eval_seed("push-v3", 3), eval_seed("push-v3", 4)]
    sub = get_suite("metaworld-mt10", ["door-open-v3", "reach-v3"])
    assert sub.tasks == ("door-open-v3", "reach-v3")


def test_suite_passes_env_kwargs_to_factory():
    suite = get_suite("metaworld-mt10", ["reach-v3"], max_steps=15, size=64)
    env = suite.make_env("reach-v3")  # constructing does not start the simulator
    assert isinstance(env, MetaWorldEnv)
    assert env.max_steps == 15 and env.cameras[0].size == 64 and env.cameras[0].name == "corner"
    assert env.instruction == "reach to the target location"


def test_unknown_suite_and_task():
    with pytest.raises(ConfigError, match="unknown evaluation suite 'libero'"):
        get_suite("libero")
    with pytest.raises(ConfigError, match=r"no task\(s\) \['fly-v3'\]"):
        get_suite("metaworld-mt10", ["reach-v3", "fly-v3"])
