"""Policy: the action-chunk queue, per-inference latency, TorchPolicy and the runtime registry."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.rollout import PolicySpec
from vla_compress.runtime import Policy, TorchPolicy
from vla_compress.runtime.registry import build_policy


class CountingPolicy(Policy):
    """Returns chunk k as rows [k*10 + 0, k*10 + 1, ...] so the queue order is visible."""

    def __init__(self, chunk: int = 3, **kw):
        super().__init__(**kw)
        self.chunk, self.calls = chunk, 0

    def infer(self, observation):
        k = self.calls
        self.calls += 1
        return np.array([[k * 10 + i] for i in range(self.chunk)], dtype=np.float64)


def test_queue_serves_whole_chunk_before_inferring_again():
    p = CountingPolicy(chunk=3)
    actions = [p.act({}) for _ in range(7)]
    assert [a.item() for a in actions] == [0, 1, 2, 10, 11, 12, 20]
    assert p.calls == 3 and len(p.latencies_s) == 3
    assert all(t >= 0 for t in p.latencies_s)
    assert actions[0].dtype == np.float32


def test_execute_steps_truncates_chunk():
    p = CountingPolicy(chunk=4, execute_steps=2)
    assert [p.act({}).item() for _ in range(5)] == [0, 1, 10, 11, 20]


def test_reset_drops_queued_actions():
    p = CountingPolicy(chunk=3)
    p.act({})
    p.reset()
    assert p.act({}).item() == 10
    assert p.calls == 2


def test_torch_policy(tiny_models, make_obs):
    vla = tiny_models["regression"]
    p = TorchPolicy(vla)
    obs = make_obs(0)
    expected = vla.act(obs)
    got = [p.act(obs) for _ in range(vla.cfg.chunk_size)]
    assert np.array_equal(np.stack(got), expected)
    assert len(p.latencies_s) == 1
    d = p.describe()
    assert d["runtime"] == "torch" and d["family"] == "reference"
    assert d["action_spec"]["chunk_size"] == 2


def test_registry_builds_torch_policy(tiny_checkpoints, make_obs):
    p = PolicySpec("torch", str(tiny_checkpoints["tokens"]), {"execute_steps": 1, "name": "t"}).build()
    assert isinstance(p, TorchPolicy) and p.name == "t" and p.execute_steps == 1
    p.act(make_obs(0))
    p.act(make_obs(0))
    assert len(p.latencies_s) == 2  # one action executed per chunk


def test_unknown_runtime():
    with pytest.raises(ConfigError, match="unknown runtime 'tflite'; known: .*llama.cpp, onnx, ov, tensorrt, torch"):
        build_policy(PolicySpec("tflite", "x"))
