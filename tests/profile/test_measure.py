"""Measurement on the local machine: percentiles, Hz = executed chunk / latency, per-component
breakdown (torch hooks, ONNX Runtime timing), memory, and the local host description."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.profile import jetson
from vla_compress.profile.measure import example_observations, measure_policy
from vla_compress.runtime.policy import Policy, TorchPolicy


class SleepPolicy(Policy):
    """Returns a (5, 3) chunk after a short sleep, and times its two 'graphs' like the ORT policy."""

    runtime = "fake"

    def __init__(self, execute_steps=None):
        super().__init__(execute_steps)
        self.component_latencies_s: dict[str, list[float]] = {}

    def infer(self, observation):
        time.sleep(0.002)
        for k, v in (("prefill", 0.0015), ("decode", 0.0005)):
            self.component_latencies_s.setdefault(k, []).append(v)
        return np.zeros((5, 3), np.float32)


OBS = [{"images": {"corner": np.zeros((8, 8, 3), np.uint8)}, "instruction": "x"}]


def test_torch_policy_percentiles_hz_and_breakdown(tiny_models):
    for head, vla in tiny_models.items():
        hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vla.modules())
        m = measure_policy(TorchPolicy(vla), steps=6, warmup=1)
        d = m.to_dict()
        lat = d["latency_ms"]
        assert len(m.latencies_ms) == 6 and all(t > 0 for t in m.latencies_ms)
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert m.chunk_size == 2 and m.executed_per_inference == 2
        assert d["control_hz"] == pytest.approx(2 * 1e3 / lat["p50"])
        assert d["inference_hz"] == pytest.approx(1e3 / lat["p50"])
        groups = {"vision", "projector", "prefill", "other"} | ({"decode"} if head == "tokens" else {"action_head"})
        assert groups <= set(d["breakdown_ms"]) and all(v >= 0 for v in d["breakdown_ms"].values())
        assert sum(d["breakdown_ms"].values()) <= 2 * lat["max"]
        assert d["memory"]["peak_rss_bytes"] > 10**7 and "peak" in d["memory"]["peak_rss_method"]
        assert d["kind"] == "measured" and d["device"].startswith("this host")
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in vla.modules()) == hooks_before


def test_hz_is_chunk_over_latency_and_follows_execute_steps():
    m = measure_policy(SleepPolicy(), OBS, steps=5, warmup=1)
    assert m.chunk_size == 5 and m.p50_ms >= 2.0
    assert m.control_hz == pytest.approx(5 * 1e3 / m.p50_ms)
    m2 = measure_policy(SleepPolicy(execute_steps=2), OBS, steps=5, warmup=1)
    assert m2.executed_per_inference == 2 and m2.control_hz == pytest.approx(2 * m2.inference_hz)
    # the runtime's own per-graph timing is the breakdown (only the timed steps)
    assert m.breakdown_ms == {"prefill": pytest.approx(1.5), "decode": pytest.approx(0.5)}


def test_bad_arguments_and_observations(tiny_models):
    with pytest.raises(ConfigError, match="steps"):
        measure_policy(SleepPolicy(), OBS, steps=0)
    with pytest.raises(ConfigError, match="observations"):
        measure_policy(SleepPolicy(), steps=1)  # no model to build observations from
    obs = example_observations(TorchPolicy(tiny_models["regression"]), 3)
    assert len(obs) == 3 and obs[0]["images"]["corner"].shape == (32, 32, 3) and obs[0]["state"].shape == (4,)
    assert obs[0]["instruction"] != obs[1]["instruction"] and obs[0]["images"]["corner"].any()


def test_host_description_and_generated_profile(tmp_path):
    from vla_compress.hardware import load_hardware
    from vla_compress.profile.host import describe_host, write_host_profile

    h = describe_host(quick=True)
    assert h.usable_cores >= 1 and h.memory_bytes > 10**8 and h.cpu_model
    assert h.bandwidth_gbs > 0.1 and h.matmul_tflops["fp32"] > 1e-4 and h.op_overhead_us > 0
    assert set(h.methods) == {"bandwidth_gbs", "matmul_tflops", "op_overhead_us"}
    path = write_host_profile(h, tmp_path)
    p = load_hardware(path)
    assert p.name == "local-host" and p.kind == "cpu"
    assert p.peak("fp32", runtime="torch") == pytest.approx(h.matmul_tflops["fp32"], rel=1e-3)
    assert p.bandwidth() == pytest.approx(h.bandwidth_gbs, rel=1e-3)
    assert "measured on this host" in p.facts["bandwidth_gbs"].source


@pytest.mark.skipif(jetson.is_jetson(), reason="checks the non-Jetson path")
def test_jetson_readers_are_skipped_off_jetson():
    assert jetson.power_mode() is None or not jetson.is_jetson()
    with jetson.PowerSampler() as p:
        pass
    assert p.result() is None
    m = measure_policy(SleepPolicy(), OBS, steps=1, warmup=0)
    assert m.power is None and m.power_mode is None
