"""Calibration: the least-squares fit recovers known efficiency factors from synthetic
measurements, holds what the data cannot determine, and stores them beside the profile."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.hardware import Efficiency, hardware_dir, load_hardware
from vla_compress.profile.calibrate import Sample, calibrate, fit_efficiency
from vla_compress.profile.estimate import RooflineTerms, estimate
from vla_compress.profile.measure import Measurement
from vla_compress.profile.trace import trace_policy_step

PRIOR = {"eta_compute": 0.5, "eta_memory": 0.5, "launch_overhead_us": 2.0}


def _terms(rng, n: int, compute_scale: float, memory_scale: float) -> RooflineTerms:
    c, m = rng.uniform(0, compute_scale, n), rng.uniform(0, memory_scale, n)
    return RooflineTerms(c, m, np.ones(n), np.array(["prefill"] * n, dtype=object), c, m, ["fp32"] * n, ["fp32"] * n)


def test_fit_recovers_known_factors_from_synthetic_measurements():
    rng = np.random.default_rng(0)
    true = (0.4, 0.7, 8e-6)
    mixes = [(50, 1e-3, 1e-5), (200, 1e-5, 1e-3), (400, 1e-6, 1e-6), (80, 5e-4, 5e-4), (30, 2e-4, 1e-4)]
    samples = []
    for n, cs, ms in mixes:
        t = _terms(rng, n, cs, ms)
        samples.append(Sample(t, float(t.times(*true).sum())))
    fit = fit_efficiency(samples, PRIOR)
    assert fit.fitted == ("eta_compute", "eta_memory", "launch_overhead_us") and not fit.held
    assert fit.eta_compute == pytest.approx(0.4, rel=1e-3)
    assert fit.eta_memory == pytest.approx(0.7, rel=1e-3)
    assert fit.launch_overhead_us == pytest.approx(8.0, rel=1e-3)
    assert fit.rms_relative_error < 1e-3
    # one compute-bound sample: only eta_compute is determined; the rest stay at the prior
    one = fit_efficiency(samples[:1], PRIOR)
    assert one.fitted == ("eta_compute",) and one.eta_memory == 0.5 and one.launch_overhead_us == 2.0
    assert set(one.held) == {"eta_memory", "launch_overhead_us"}
    with pytest.raises(ConfigError):
        fit_efficiency([], PRIOR)


def _measured(est) -> Measurement:
    """A Measurement whose per-group times are exactly `est`'s (synthetic ground truth)."""
    return Measurement(policy={}, steps=1, warmup=0, latencies_ms=[est.latency_s * 1e3], chunk_size=2,
                       executed_per_inference=2, breakdown_ms={g: v * 1e3 for g, v in est.per_group_s.items()},
                       memory={}, device="synthetic")


def test_calibrate_recovers_and_stores_factors_for_real_traces(tmp_path, tiny_models, make_obs):
    # a slow device, so that the tiny models' kernels are neither all launch overhead nor all one bound
    text = (hardware_dir() / "x86-desktop-cpu.yaml").read_text()
    text = text.replace("bandwidth_gbs: {value: 83.2,", "bandwidth_gbs: {value: 0.5,").replace(
        "fp32: {value: 2.5,", "fp32: {value: 0.002,")
    (tmp_path / "x86-desktop-cpu.yaml").write_text(text)
    profile = load_hardware(tmp_path / "x86-desktop-cpu.yaml")
    assert profile.bandwidth() == 0.5 and profile.peak("fp32") == 0.002
    true = dataclasses.replace(profile, base_efficiency=Efficiency({"default": 0.3}, {"default": 0.6}, 4.0),
                               runtime_efficiency={})
    runs = []
    for head, m in tiny_models.items():
        for instruction in ("open the door", "pick up the object and place it at the goal " * 3):
            tr = trace_policy_step(m, make_obs(0, instruction=instruction))
            runs.append((tr, _measured(estimate(tr, true, "fp32", "torch")), "fp32", f"{head}:{len(instruction)}"))
    fit, path = calibrate(profile, runs, runtime="torch")
    assert (fit.eta_compute, fit.eta_memory, fit.launch_overhead_us) == pytest.approx((0.3, 0.6, 4.0), rel=0.02)
    assert path == tmp_path / "calibration" / "x86-desktop-cpu.yaml" and path.is_file()
    calibrated = load_hardware(tmp_path / "x86-desktop-cpu.yaml")
    eff = calibrated.efficiency("torch")
    assert eff.compute("fp32") == pytest.approx(0.3, rel=0.02) and eff.launch_overhead_us == pytest.approx(4.0, rel=0.02)
    assert calibrated.efficiency("onnxruntime").compute("fp32") == 0.5  # other runtimes keep their defaults
    tr, m = runs[0][0], runs[0][1]
    e = estimate(tr, calibrated, "fp32", "torch")
    assert e.latency_s * 1e3 == pytest.approx(m.p50_ms, rel=0.02)
    assert e.inputs["calibrated"]
    assert "fit by vla_compress.profile.calibrate" in e.inputs["efficiency_sources"]["eta_compute.fp32"]
