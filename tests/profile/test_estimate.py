"""Roofline estimate: the per-operator formula by hand, precision handling, monotonicity (more tokens
is never faster; a lower-bit format is never slower on a bandwidth-bound decode) and the fit check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vla_compress.errors import ConfigError
from vla_compress.hardware import load_hardware
from vla_compress.profile.estimate import estimate, memory_fit, resolve_precision
from vla_compress.profile.trace import OpRecord, StepTrace, trace_policy_step

ORIN = "jetson-agx-orin-64gb"


@pytest.fixture(scope="module")
def orin():
    return load_hardware(ORIN, calibrated=False)


@pytest.fixture(scope="module")
def mid_trace():
    """A ~140M-parameter tokens-head model on the meta device: its decode is bandwidth-bound on an Orin."""
    from vla_compress.models.reference import ReferenceVLA
    from vla_compress.models.reference.configuration_reference import BackboneConfig, ReferenceConfig, VisionConfig

    cfg = ReferenceConfig(vision=VisionConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                                              num_layers=1, num_heads=2),
                          backbone=BackboneConfig(hidden_size=1024, intermediate_size=4096, num_layers=8, num_heads=8,
                                                  num_kv_heads=8),
                          head="tokens", chunk_size=1, action_dim=4)
    with torch.device("meta"):
        m = ReferenceVLA.build(cfg)
    return trace_policy_step(m)


def _one_op_trace(flops: int, weight_elems: int, act_elems: int) -> StepTrace:
    op = OpRecord("linear", "matmul", "backbone", 0, flops, weight_elems, act_elems, "backbone.w", act_elems // 2)
    return StepTrace([op], {"backbone": 1}, {"backbone": weight_elems}, weight_elems, 0, 0, {"chunk_size": 1})


@pytest.mark.parametrize("flops,weights,acts", [(10**12, 10**6, 10**4), (10**6, 10**9, 10**4)])
def test_roofline_formula_by_hand(orin, flops, weights, acts):
    """t = max(F / (eta_c * peak), bytes / (eta_m * BW)) + launch, with the profile's inputs."""
    e = estimate(_one_op_trace(flops, weights, acts), orin, "fp16", "tensorrt")
    eff = orin.efficiency("tensorrt")
    compute = flops / (eff.compute("fp16") * orin.peak("fp16") * 1e12)
    memory = (weights + acts) * 2 / (eff.memory("fp16") * orin.bandwidth() * 1e9)
    assert e.latency_s == pytest.approx(max(compute, memory) + eff.launch_overhead_us * 1e-6, rel=1e-9)
    assert e.per_group_s == {"prefill": pytest.approx(e.latency_s)}
    assert e.bound["prefill"] == (1.0 if memory > compute else 0.0)
    # int4 weight-only: weights at 4.5 bits (block scales), activations stay fp16, compute at fp16
    e4 = estimate(_one_op_trace(flops, weights, acts), orin, "int4", "tensorrt")
    memory4 = (weights * 4.5 / 8 + acts * 2) / (eff.memory("int4") * orin.bandwidth() * 1e9)
    assert e4.latency_s == pytest.approx(max(compute, memory4) + eff.launch_overhead_us * 1e-6, rel=1e-9)


def test_precision_resolution(orin):
    int4 = resolve_precision("int4", orin, "tensorrt")
    assert int4.weight_only and int4.compute == "fp16" and int4.weight_bytes == 4.5 / 8
    int8 = resolve_precision("int8", orin, "tensorrt")
    assert not int8.weight_only and int8.compute == "int8" and int8.act_compute == "fp16"
    assert resolve_precision("w8a16", orin, "tensorrt").weight_only
    assert resolve_precision("int4-weight", orin, "tensorrt").weight_only  # the ONNX export's name
    with pytest.raises(ConfigError, match="no fp8"):
        resolve_precision("fp8", orin, "tensorrt")  # SM 8.7 has no FP8
    with pytest.raises(ConfigError, match="weight-only: none"):
        resolve_precision("int4", orin, "torch")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("int3", orin, "tensorrt")


def test_estimate_is_labelled_with_all_its_inputs(mid_trace, orin):
    d = estimate(mid_trace, orin, "int4").to_dict()
    assert d["kind"] == "estimate" and "not a measurement" in d["inputs"]["label"]
    i = d["inputs"]
    assert i["device"] == ORIN and i["power_mode"] == "MAXN" and i["runtime"] == "tensorrt"
    assert i["precision"]["weight_only"] and i["peak_tflops"] == {"fp16": 42.5} and i["bandwidth_gbs"] == 204.8
    assert i["efficiency"]["eta_memory"]["int4"] == 0.82 and i["calibrated"] is False
    assert "0.82" in i["efficiency_sources"]["eta_memory.int4"]
    assert i["model"]["tokens"]["prefill"] > 0 and i["kernels"] > 0 and i["fused"] is True
    assert d["control_hz"] == pytest.approx(1e3 / d["latency_ms"])  # chunk of 1


def test_lower_precision_is_not_slower_on_a_bandwidth_bound_decode(mid_trace, orin):
    est = {p: estimate(mid_trace, orin, p) for p in ("fp16", "w8a16", "int4")}
    assert est["fp16"].bound["decode"] > 0.95  # the decode is bandwidth-bound here
    decode = [est[p].per_group_s["decode"] for p in ("fp16", "w8a16", "int4")]
    assert decode[0] > decode[1] > decode[2]
    assert est["fp16"].latency_s >= est["w8a16"].latency_s >= est["int4"].latency_s
    # and on a CPU profile, fp32 -> int8 (W8A8) is not slower either
    cpu = load_hardware("x86-desktop-cpu", calibrated=False)
    int8, fp32 = (estimate(mid_trace, cpu, p, "onnxruntime").latency_s for p in ("int8", "fp32"))
    assert int8 <= fp32


def test_more_tokens_is_never_faster(tiny_models, make_obs):
    from vla_compress.models.reference import ReferenceVLA

    m = tiny_models["tokens"]
    short = trace_policy_step(m, make_obs(0, instruction="open the door"))
    long = trace_policy_step(m, make_obs(0, instruction="pick up the object and place it at the goal " * 4))
    assert long.model["tokens"]["prefill"] > short.model["tokens"]["prefill"]
    full = ReferenceVLA.tiny(head="regression")
    pruned = ReferenceVLA.tiny(head="regression")
    pruned.visual_keep = torch.arange(4)
    few, many = trace_policy_step(pruned), trace_policy_step(full)
    for name, prec in ((ORIN, "fp16"), (ORIN, "int4"), ("x86-desktop-cpu", "fp32"), ("rtx-4090", "fp16")):
        hw = load_hardware(name, calibrated=False)
        for fused in (True, False):
            assert estimate(long, hw, prec, fused=fused).latency_s >= estimate(short, hw, prec, fused=fused).latency_s
        # pruning adds a gather: in eager mode (fused=False) that is one more kernel launch, which on a
        # 4-token-saving tiny model may cost more than it saves; compiled runtimes fold it away
        assert estimate(many, hw, prec, fused=True).latency_s >= estimate(few, hw, prec, fused=True).latency_s


def test_power_mode_changes_the_estimate(mid_trace):
    nano = load_hardware("jetson-orin-nano-8gb", calibrated=False)
    slow, fast = (estimate(mid_trace, nano, "fp16", power_mode=m) for m in ("15W", "MAXN_SUPER"))
    assert fast.latency_s < slow.latency_s and fast.power_mode == "MAXN_SUPER"


def test_fit_check_flags_a_model_too_big_with_the_bytes_it_needs(mid_trace, orin):
    small = dataclasses.replace(orin, memory_gb=0.1)  # a 100 MB device
    e = estimate(mid_trace, small, "fp16")
    fit = e.memory
    assert not fit.fits and fit.device_bytes == 100_000_000
    assert fit.weights_bytes == mid_trace.matrix_param_elems * 2 + mid_trace.vector_param_elems * 2
    assert fit.kv_cache_bytes == mid_trace.kv_cache_elems * 2 > 0
    assert fit.needed_bytes == fit.weights_bytes + fit.kv_cache_bytes + fit.activations_bytes > 200_000_000
    assert e.to_dict()["memory"]["headroom_bytes"] < 0
    # int4 weights take 4.5/16 of the fp16 bytes; the same model fits the real Orin
    spec = resolve_precision("int4", orin, "tensorrt")
    assert memory_fit(mid_trace, spec, 10**9).weights_bytes == int(mid_trace.matrix_param_elems * 4.5 / 8
                                                                     + mid_trace.vector_param_elems * 2)
    assert estimate(mid_trace, orin, "fp16").memory.fits


@pytest.mark.parametrize("flops,weights,acts", [(10**12, 10**6, 10**4), (10**6, 10**9, 10**4)])
def test_an_uncalibrated_estimate_carries_its_band_by_hand(orin, flops, weights, acts):
    """The band sweeps eta_c over [0.4, 0.6], eta_m over [0.42, 0.85] (widened to include the
    profile's own value) and the per-kernel overhead over /3..x3."""
    from vla_compress.profile.estimate import ETA_COMPUTE_SPREAD, ETA_MEMORY_SPREAD, OVERHEAD_FACTOR

    e = estimate(_one_op_trace(flops, weights, acts), orin, "fp16", "tensorrt")
    eff = orin.efficiency("tensorrt")
    c = flops / (orin.peak("fp16") * 1e12)
    mem = (weights + acts) * 2 / (orin.bandwidth() * 1e9)
    launch = eff.launch_overhead_us * 1e-6
    ec, em = eff.compute("fp16"), eff.memory("fp16")
    fast = max(c / max(ETA_COMPUTE_SPREAD[1], ec), mem / max(ETA_MEMORY_SPREAD[1], em)) + launch / OVERHEAD_FACTOR
    slow = max(c / min(ETA_COMPUTE_SPREAD[0], ec), mem / min(ETA_MEMORY_SPREAD[0], em)) + launch * OVERHEAD_FACTOR
    assert e.range_s == (pytest.approx(fast, rel=1e-9), pytest.approx(slow, rel=1e-9))
    assert e.range_s[0] <= e.latency_s <= e.range_s[1]
    d = e.to_dict()
    assert d["latency_ms_range"] == [pytest.approx(fast * 1e3), pytest.approx(slow * 1e3)]
    assert "uncalibrated" in d["inputs"]["uncertainty"]["how"]


def test_a_calibrated_estimate_is_swept_over_its_fit_error(mid_trace, tmp_path, monkeypatch):
    """Calibrated factors narrow the band to the calibration's stated rms relative error."""
    import shutil

    from vla_compress.hardware import ENV_DIR, load_hardware, save_calibration

    shutil.copy(load_hardware(ORIN, calibrated=False).path, tmp_path / f"{ORIN}.yaml")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    prof = load_hardware(ORIN, calibrated=False)
    wide = estimate(mid_trace, prof, "fp16", "tensorrt")
    save_calibration(prof, {"eta_compute.fp16": 0.5, "eta_memory.fp16": 0.7, "launch_overhead_us": 8.0},
                     "fit by a test, rms relative error 10.0%", runtime="tensorrt")
    cal = estimate(mid_trace, load_hardware(ORIN), "fp16", "tensorrt")
    lo, hi = cal.range_s
    assert lo == pytest.approx(sum_at(mid_trace, cal, 0.5 * 1.1, 0.7 * 1.1, 8.0 * 0.9), rel=1e-6)
    assert hi == pytest.approx(sum_at(mid_trace, cal, 0.5 * 0.9, 0.7 * 0.9, 8.0 * 1.1), rel=1e-6)
    assert hi - lo < wide.range_s[1] - wide.range_s[0]
    assert "10%" in cal.inputs["uncertainty"]["how"]


def sum_at(trace, e, eta_c: float, eta_m: float, overhead_us: float) -> float:
    """The estimate's kernels re-timed by hand at uniform factors."""
    from vla_compress.hardware import load_hardware
    from vla_compress.profile.estimate import resolve_precision, roofline_terms

    prof = load_hardware(e.device)
    terms = roofline_terms(trace, prof, resolve_precision("fp16", prof, "tensorrt"), e.power_mode, "tensorrt", True)
    return float(terms.times(eta_c, eta_m, overhead_us * 1e-6).sum())
