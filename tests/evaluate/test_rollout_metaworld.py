"""Real closed-loop MetaWorld runs: a tiny random policy for 15 steps, and one scripted-expert demo.

These start MuJoCo with a headless GL backend (EGL or OSMesa, chosen by ensure_gl_backend) and
take a few seconds each.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from vla_compress.evaluate.metaworld_env import CameraSpec, MetaWorldEnv
from vla_compress.evaluate.rollout import PolicySpec, evaluate
from vla_compress.evaluate.seeds import EVAL_SEED_BASE, demo_seed, eval_seed

# gymnasium's passive checker and MetaWorld's experts warn on every run; the warnings are known
# and harmless (MetaWorld's Box bounds; expert gains above the env's clip range).
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker"),
    pytest.mark.filterwarnings("ignore::UserWarning:metaworld.policies.policy"),
]


@pytest.fixture(scope="module")
def eval_result(tiny_checkpoints):
    calls = []
    result = evaluate(PolicySpec("torch", str(tiny_checkpoints["regression"])), "metaworld-mt10",
                      tasks=["reach-v3"], episodes=1, workers=1, threads_per_worker=1, max_steps=15,
                      on_episode=lambda r, done, total: calls.append((r.task, done, total)))
    return result, calls


def test_evaluate_result_structure(eval_result, tiny_checkpoints):
    result, calls = eval_result
    assert calls == [("reach-v3", 1, 1)]
    assert result["suite"] == "metaworld-mt10"
    assert result["policy"] == {"runtime": "torch", "path": str(tiny_checkpoints["regression"]), "options": {}}
    assert result["episodes_per_task"] == 1 and result["workers"] == 1
    assert list(result["per_task"]) == ["reach-v3"]
    task = result["per_task"]["reach-v3"]
    assert task["episodes"] == 1 and task["successes"] in (0, 1)
    assert task["success_rate"] == task["successes"]
    lo, hi = task["ci95"]
    assert 0.0 <= lo <= task["success_rate"] <= hi <= 1.0
    assert result["pooled"]["episodes"] == 1
    assert result["mean_success"] == task["success_rate"]
    assert result["wall_s"] >= 0


def test_evaluate_episode_steps_seed_and_latency(eval_result):
    result, _ = eval_result
    (ep,) = result["episodes"]
    assert ep["task"] == "reach-v3"
    assert 1 <= ep["steps"] <= 15  # max_steps reached the MetaWorld suite factory
    if not ep["success"]:
        assert ep["steps"] == 15
    # the tiny model has chunk 2: one inference per two executed actions
    assert ep["inferences"] == -(-ep["steps"] // 2)
    assert ep["mean_infer_ms"] > 0
    lat = result["latency_ms"]
    assert lat["mean_per_inference"] == pytest.approx(ep["mean_infer_ms"]) and lat["p50"] > 0
    # evaluation seeds, never a demonstration seed
    assert ep["seed"] == eval_seed("reach-v3", 0) >= EVAL_SEED_BASE
    assert ep["seed"] not in {demo_seed("reach-v3", i) for i in range(1000)}


def test_env_observation_contract():
    env = MetaWorldEnv("reach-v3", CameraSpec("corner", 64), max_steps=3)
    try:
        obs, raw = env.reset(eval_seed("reach-v3", 0))
        assert os.environ["MUJOCO_GL"] in ("egl", "osmesa", "glfw")
        assert obs["images"]["corner"].shape == (64, 64, 3) and obs["images"]["corner"].dtype == np.uint8
        assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
        assert np.array_equal(obs["state"], raw[:4].astype(np.float32))  # hand xyz + gripper only
        assert obs["instruction"] == "reach to the target location"
        done = False
        for _ in range(3):
            obs, raw, success, done = env.step(np.zeros(4))
        assert done  # max_steps ends the episode
    finally:
        env.close()


def test_frames_render_on_first_read_and_match_eager_rendering():
    """Frames render lazily (a chunked policy reads one step in N); they are the frames eager rendering
    gives, the physics is unchanged by not rendering, and a frame read after the env moved on is refused."""
    from vla_compress.errors import SimulationError

    seed = eval_seed("reach-v3", 0)
    action = np.array([0.5, -0.3, 0.2, 1.0])
    eager, lazy = (MetaWorldEnv("reach-v3", (CameraSpec("corner", 48), CameraSpec("gripperPOV", 32)), max_steps=6)
                   for _ in range(2))
    try:
        eo, _ = eager.reset(seed)
        lo, _ = lazy.reset(seed)
        assert list(lo["images"]) == ["corner", "gripperPOV"] and len(lo["images"]) == 2
        for step in range(5):
            frames = {k: eo["images"][k] for k in eo["images"]}  # every frame read, every step
            if step in (0, 3):  # the lazy env is read on two steps only
                assert all(np.array_equal(lo["images"][k], frames[k]) for k in frames)
                assert lo["images"]["corner"] is lo["images"]["corner"]  # rendered once
            stale = lo
            eo, eraw, es, _ = eager.step(action)
            lo, lraw, ls, _ = lazy.step(action)
            assert np.array_equal(eraw, lraw) and es == ls  # rendering never touches the physics
        with pytest.raises(SimulationError, match="earlier step was read after the env moved on"):
            stale["images"]["gripperPOV"]
    finally:
        eager.close()
        lazy.close()


def test_policy_step_reads_frames_before_its_clock():
    """The runtime Policy renders lazy frames before timing inference (rendering is not latency)."""
    from vla_compress.runtime.policy import with_frames

    env = MetaWorldEnv("reach-v3", CameraSpec("corner", 32), max_steps=3)
    try:
        obs, _ = env.reset(eval_seed("reach-v3", 0))
        plain = with_frames(obs)
        assert type(plain["images"]) is dict and plain["images"]["corner"].shape == (32, 32, 3)
        assert with_frames(plain) is plain
    finally:
        env.close()


def test_same_seed_same_placement():
    env = MetaWorldEnv("reach-v3", CameraSpec("corner", 32), max_steps=5)
    try:
        _, raw_a = env.reset(123)
        _, raw_b = env.reset(123)
        _, raw_c = env.reset(124)
    finally:
        env.close()
    assert np.array_equal(raw_a, raw_b)
    assert not np.array_equal(raw_a, raw_c)


def test_expert_episode_reach():
    from vla_compress.data.collect import expert_episode

    seed = demo_seed("reach-v3", 0)
    ep = expert_episode("reach-v3", seed, (CameraSpec("corner", 128), CameraSpec("gripperPOV", 64)))
    assert ep.extras == {"env_task": "reach-v3", "seed": seed, "success": True}
    assert ep.task == "reach to the target location"
    n = len(ep)
    assert 1 <= n < 300
    frames = ep.images["corner"]
    assert frames.shape == (n, 128, 128, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # a rendered scene, not a blank buffer
    wrist = ep.images["gripperPOV"]  # the wrist camera moves with the hand
    assert wrist.shape == (n, 64, 64, 3) and wrist.std() > 0 and not np.array_equal(wrist[0], wrist[-1])
    assert ep.state.shape == (n, 4) and ep.state.dtype == np.float32  # hand xyz + gripper only
    assert ep.action.shape == (n, 4) and ep.action.dtype == np.float32
    assert np.abs(ep.action).max() <= 1.0  # stored clipped, as executed
    # the hand moves during a successful reach
    assert np.linalg.norm(ep.state[-1, :3] - ep.state[0, :3]) > 0.01


@pytest.mark.slow
def test_evaluate_in_worker_processes(tiny_checkpoints):
    """Two spawned workers each build the policy from its PolicySpec; results come back in seed order."""
    result = evaluate(PolicySpec("torch", str(tiny_checkpoints["tokens"])), "metaworld-mt10",
                      tasks=["reach-v3", "push-v3"], episodes=2, workers=2, threads_per_worker=1, max_steps=4)
    assert result["workers"] == 2 and result["pooled"]["episodes"] == 4
    assert [(e["task"], e["seed"]) for e in result["episodes"]] == [
        (t, eval_seed(t, i)) for t in ("reach-v3", "push-v3") for i in range(2)]
    assert all(1 <= e["steps"] <= 4 and e["inferences"] >= 1 for e in result["episodes"])


def test_env_bad_camera_names_are_refused():
    from vla_compress.errors import SimulationError

    with pytest.raises(SimulationError, match="camera names repeat"):
        MetaWorldEnv("reach-v3", (CameraSpec("corner", 64), CameraSpec("corner", 32)))
    env = MetaWorldEnv("reach-v3", CameraSpec("wrist-cam", 32), max_steps=3)
    try:
        with pytest.raises(SimulationError, match="has no camera 'wrist-cam'"):
            env.reset(eval_seed("reach-v3", 0))
    finally:
        env.close()
