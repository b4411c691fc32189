"""Fit the roofline's efficiency factors (eta_compute, eta_memory, launch overhead) to measured
policy steps, and store them beside a device profile (hardware.save_calibration).

The model: t = sum over kernels of max(c_i / eta_c, m_i / eta_m) + L * kernels, where c_i and m_i
are the kernel's compute and memory times at eta = 1 (estimate.RooflineTerms). Each sample is a
measured time with the kernels it covers: a component group of one measured step (vision encoder,
prefill, decode steps, ...) or a whole step, over one or several models and precisions.

The fit minimises the squared *relative* errors (a 2 ms component counts as much as a 200 ms one).
With a = 1/eta_c and rho = eta_c/eta_m the model is a * sum(max(c_i, rho * m_i)) + L * K: linear in
(a, L) for a fixed rho, so rho is scanned on a log grid (refined twice) and (a, L) solved by
bounded least squares (eta <= 1, L >= 0). Parameters the data cannot determine are held at their
prior (the profile's current value): the launch overhead with fewer than 3 samples, and an eta
whose bound accounts for under 5% of the predicted time (nothing measured exercises it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..backends import canonical_or_same
from ..errors import ConfigError
from .estimate import RooflineTerms, default_runtime, resolve_precision, roofline_terms
from .trace import GROUPS, StepTrace

PARAMS = ("eta_compute", "eta_memory", "launch_overhead_us")
MIN_SHARE = 0.05  # an eta whose bound is under this share of the predicted time is not fitted
# Which trace groups a measured breakdown key covers, per runtime (the ONNX graphs are coarser).
ORT_GROUPS = {"prefill": ("vision", "projector", "prefill"), "decode": ("decode", "action_head"),
              "policy_step": GROUPS}


@dataclass
class Sample:
    """One measured time (seconds) and the roofline terms of the kernels it covers."""
    terms: RooflineTerms
    measured_s: float
    label: str = ""


@dataclass
class FitResult:
    eta_compute: float
    eta_memory: float
    launch_overhead_us: float
    fitted: tuple[str, ...]
    held: dict[str, str]  # parameter -> why it was held at its prior
    rms_relative_error: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sums(samples: Sequence[Sample], rho: float) -> np.ndarray:
    return np.array([np.maximum(s.terms.compute_s, rho * s.terms.memory_s).sum() for s in samples])


def _solve(S: np.ndarray, K: np.ndarray, y: np.ndarray, a_fixed: float | None, a_min: float,
           L_fixed: float | None) -> tuple[float, float, float]:
    """Bounded relative least squares of a * S + L * K ~ y over a >= a_min, L >= 0 (either may be fixed).
    Returns (a, L, objective)."""
    def obj(a: float, L: float) -> float:
        return float((((a * S + L * K) - y) / y) ** 2 @ np.ones(len(y)))

    Sw, Kw = S / y, K / y
    cands: list[tuple[float, float]] = []
    if a_fixed is not None and L_fixed is not None:
        cands = [(a_fixed, L_fixed)]
    elif a_fixed is not None:  # L only: minimise |a Sw + L Kw - 1|
        L = float(Kw @ (1 - a_fixed * Sw) / max(Kw @ Kw, 1e-300))
        cands = [(a_fixed, max(L, 0.0))]
    elif L_fixed is not None:
        a = float(Sw @ (1 - L_fixed * Kw) / max(Sw @ Sw, 1e-300))
        cands = [(max(a, a_min), L_fixed)]
    else:
        A = np.stack([Sw, Kw], axis=1)
        sol, *_ = np.linalg.lstsq(A, np.ones(len(y)), rcond=None)
        if sol[0] >= a_min and sol[1] >= 0:
            cands.append((float(sol[0]), float(sol[1])))
        L = float(Kw @ (1 - a_min * Sw) / max(Kw @ Kw, 1e-300))  # a on its bound
        cands.append((a_min, max(L, 0.0)))
        a = float(Sw @ np.ones(len(y)) / max(Sw @ Sw, 1e-300))  # L on its bound
        cands.append((max(a, a_min), 0.0))
    best = min(cands, key=lambda c: obj(*c))
    return best[0], best[1], obj(*best)


def _shares(samples: Sequence[Sample], eta_c: float, eta_m: float, launch_s: float) -> dict[str, float]:
    """Share of the predicted time spent in compute-bound and in memory-bound kernels."""
    c_time = m_time = total = 0.0
    for s in samples:
        tc, tm = s.terms.compute_s / eta_c, s.terms.memory_s / eta_m
        c_time += float(tc[tc >= tm].sum())
        m_time += float(tm[tm > tc].sum())
        total += float(np.maximum(tc, tm).sum() + launch_s * s.terms.launch.sum())
    return {"eta_compute": c_time / max(total, 1e-300), "eta_memory": m_time / max(total, 1e-300)}


def _hold_weak(shares: dict[str, float], fixed: dict, held: dict, prior: dict) -> bool:
    """Hold at the prior each free eta whose share is under MIN_SHARE; True if any was."""
    weak = [p for p, share in shares.items() if p not in fixed and share < MIN_SHARE]
    for p in weak:
        fixed[p], held[p] = prior[p], f"its bound is {shares[p]:.1%} of the predicted time: not determined by the data"
    return bool(weak)


def _scan(samples: Sequence[Sample], fixed: dict[str, float]) -> tuple[float, float, float, float]:
    """Best (objective, a = 1/eta_c, b = 1/eta_m, L seconds) over a log grid of rho = b / a."""
    y = np.array([s.measured_s for s in samples])
    K = np.array([s.terms.launch.sum() for s in samples], dtype=np.float64)
    L_fixed = fixed["launch_overhead_us"] * 1e-6 if "launch_overhead_us" in fixed else None
    a_fixed = 1 / fixed["eta_compute"] if "eta_compute" in fixed else None
    b_fixed = 1 / fixed["eta_memory"] if "eta_memory" in fixed else None

    def at(rho: float) -> tuple[float, float, float, float]:
        if a_fixed is not None and b_fixed is not None:
            a, L, o = _solve(_sums(samples, b_fixed / a_fixed), K, y, a_fixed, 1.0, L_fixed)
            return o, a, b_fixed, L
        S = _sums(samples, rho)
        if a_fixed is not None:
            if rho * a_fixed < 1:  # eta_memory would exceed 1
                return float("inf"), a_fixed, rho * a_fixed, 0.0
            a, L, o = _solve(S, K, y, a_fixed, 1.0, L_fixed)
            return o, a, rho * a, L
        if b_fixed is not None:
            a = b_fixed / rho
            if a < 1:
                return float("inf"), a, b_fixed, 0.0
            _, L, o = _solve(S, K, y, a, 1.0, L_fixed)
            return o, a, b_fixed, L
        a, L, o = _solve(S, K, y, None, max(1.0, 1.0 / rho), L_fixed)
        return o, a, rho * a, L

    grid = np.logspace(-4, 4, 161)
    best = (float("inf"), 1.0, 1.0, 0.0)
    for _ in range(3):  # coarse scan, then two refinements around the best point
        results = [at(r) for r in grid]
        i = int(np.argmin([r[0] for r in results]))
        best = results[i]
        grid = np.logspace(np.log10(grid[max(i - 1, 0)]), np.log10(grid[min(i + 1, len(grid) - 1)]), 41)
    return best


def fit_efficiency(samples: Sequence[Sample], prior: dict[str, float],
                   fixed: dict[str, float] | None = None) -> FitResult:
    """Fit eta_compute, eta_memory and launch_overhead_us (µs) to `samples`; `prior` holds the
    current values (used for what the data cannot determine); `fixed` pins parameters."""
    if not samples:
        raise ConfigError("calibration needs at least one measured sample")
    if any(s.measured_s <= 0 for s in samples):
        raise ConfigError("measured times must be > 0")
    missing = [p for p in PARAMS if p not in prior]
    if missing:
        raise ConfigError(f"prior lacks {missing}")
    fixed = dict(fixed or {})
    held: dict[str, str] = {p: "fixed by the caller" for p in fixed}
    if "launch_overhead_us" not in fixed and len(samples) < 3:
        fixed["launch_overhead_us"], held["launch_overhead_us"] = prior["launch_overhead_us"], "fewer than 3 samples"
    # Judge what the data can determine, first at the prior, then again at the fit: an eta whose
    # bound is under MIN_SHARE of the predicted time (launch overheads included) is not determined.
    shares = _shares(samples, prior["eta_compute"], prior["eta_memory"], prior["launch_overhead_us"] * 1e-6)
    _hold_weak(shares, fixed, held, prior)
    if "eta_compute" not in fixed and "eta_memory" not in fixed and len(samples) - ("launch_overhead_us" not in fixed) < 2:
        # one sample cannot separate the two etas: fit the dominant one
        weak = "eta_memory" if shares["eta_compute"] >= shares["eta_memory"] else "eta_compute"
        fixed[weak], held[weak] = prior[weak], "one sample: only the dominant bound is fitted"
    obj, a, b, L = _scan(samples, fixed)
    if np.isfinite(obj) and _hold_weak(_shares(samples, 1 / a, 1 / b, L), fixed, held, prior):
        obj, a, b, L = _scan(samples, fixed)
    if not np.isfinite(obj):
        raise ConfigError("calibration fit failed: no efficiency factors <= 1 reproduce the measurements "
                          "(is the profile's peak or bandwidth too low for this machine?)")
    eta_c, eta_m = 1 / a, 1 / b
    per = []
    for s in samples:
        t = float(s.terms.times(eta_c, eta_m, L).sum())
        per.append({"label": s.label, "measured_ms": s.measured_s * 1e3, "fitted_ms": t * 1e3,
                    "relative_error": t / s.measured_s - 1})
    rms = float(np.sqrt(np.mean([p["relative_error"] ** 2 for p in per])))
    fitted = tuple(p for p in PARAMS if p not in fixed)
    return FitResult(eta_c, eta_m, L * 1e6, fitted, held, rms, per)


def samples_from_measurement(trace: StepTrace, measurement, profile, precision: str, runtime: str,
                             power_mode: str | None = None, fused: bool | None = None,
                             min_ms: float = 0.05, label: str = "") -> list[Sample]:
    """Samples from one measured policy (its per-group breakdown; the whole step if it has none)."""
    spec = resolve_precision(precision, profile, runtime)
    fused = runtime != "torch" if fused is None else fused
    terms = roofline_terms(trace, profile, spec, power_mode, runtime, fused)
    bd = measurement.breakdown_ms
    mapping = ({k: (k,) for k in GROUPS if k != "other"} if runtime == "torch" else ORT_GROUPS)
    out = []
    for key, groups in mapping.items():
        ms = bd.get(key)
        if ms is None or ms < min_ms:
            continue
        sub = terms.select(groups)
        if len(sub.launch):
            out.append(Sample(sub, ms * 1e-3, f"{label}{key}"))
    if not out:
        out.append(Sample(terms, measurement.p50_ms * 1e-3, f"{label}step"))
    return out


def prior_of(profile, runtime: str, precision: str) -> dict[str, float]:
    """The profile's current factors for `runtime` at `precision` (the fit's starting point)."""
    spec = resolve_precision(precision, profile, runtime)
    eff = profile.efficiency(runtime)
    return {"eta_compute": eff.compute(spec.compute), "eta_memory": eff.memory(spec.weight_format),
            "launch_overhead_us": float(eff.launch_overhead_us or 0.0)}


def calibrate(profile, runs: Sequence[tuple], runtime: str | None = None,
              power_mode: str | None = None, fixed: dict[str, float] | None = None, save: bool = True,
              prior: dict[str, float] | None = None) -> tuple[FitResult, Any]:
    """Fit factors for `runtime` on `profile` from `runs` = [(trace, Measurement, precision[, label])], and
    (with `save`) record them with hardware.save_calibration. Returns (fit, calibration path or None).
    Factors are stored under the precision keys the runs used (or `default` when they mix)."""
    from ..hardware import save_calibration

    if not runs:
        raise ConfigError("calibration needs at least one measured run")
    runtime = canonical_or_same(runtime) if runtime else default_runtime(profile, runs[0][2])
    samples: list[Sample] = []
    for i, run in enumerate(runs):
        trace, m, precision = run[:3]
        name = run[3] if len(run) > 3 else (trace.model.get("preset") or trace.model.get("family") or f"model{i}")
        samples += samples_from_measurement(trace, m, profile, precision, runtime, power_mode,
                                            label=f"{name} | {precision} | ")
    specs = [resolve_precision(run[2], profile, runtime) for run in runs]
    fit = fit_efficiency(samples, prior or prior_of(profile, runtime, runs[0][2]), fixed)
    path = None
    if save and fit.fitted:
        ckey = specs[0].compute if len({s.compute for s in specs}) == 1 else "default"
        mkey = specs[0].weight_format if len({s.weight_format for s in specs}) == 1 else "default"
        value = {"eta_compute": (f"eta_compute.{ckey}", fit.eta_compute),
                 "eta_memory": (f"eta_memory.{mkey}", fit.eta_memory),
                 "launch_overhead_us": ("launch_overhead_us", fit.launch_overhead_us)}
        factors = {value[p][0]: round(float(value[p][1]), 6) for p in fit.fitted}
        models = sorted({s.label.split(" | ")[0] for s in samples})
        source = (f"fit by vla_compress.profile.calibrate on {time.strftime('%Y-%m-%d')}: {len(samples)} measured "
                  f"samples of {', '.join(models)} ({runtime}), rms relative error {fit.rms_relative_error:.1%}")
        path = save_calibration(profile, factors, source, runtime=runtime, power_mode=power_mode)
    return fit, path
