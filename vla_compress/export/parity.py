"""Parity between an artifact and the torch model it came from, judged against a Tolerance.

What is compared (both sides fed the same observations):
- regression head: the normalised action chunk (B, K, A) — max abs, cosine, action L1.
- tokens head: the action-bin logits at every decode step, *teacher-forced* on the torch
  tokens so both sides see the same history (max abs, cosine), plus the free-running greedy
  tokens (fraction identical) and the actions they decode to (action L1): what the robot
  would get. Free-running sequences diverge after the first flipped token; teacher forcing
  keeps the logit numbers comparable at every step, and its per-step argmax agreement is
  reported (not gated) to tell one early flip from many independent ones.
Cosine is the minimum over observations of the per-observation cosine, so one bad
observation cannot hide behind many good ones -- except observations whose torch output is small
(norm below SMALL_NORM_FRACTION of the median norm: a robot nearly at rest). There the direction of
a near-zero vector is dominated by rounding, and a cosine of 0.95 can mean an error of 0.01 in
absolute terms; those observations are judged by max abs and action L1 only, and their own
minimum cosine is reported beside (`cosine_small_norm`, `small_norm_observations`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .base import Tolerance

SMALL_NORM_FRACTION = 0.5


@dataclass
class ParityReport:
    head: str
    compared: str  # "actions" | "bin_logits"
    n_observations: int
    max_abs: float
    mean_abs: float
    cosine: float
    action_l1_mean: float
    action_l1_max: float
    token_match: float | None
    token_match_teacher_forced: float | None
    tolerance: dict
    passed: bool
    failures: list[str] = field(default_factory=list)
    timing_s: dict = field(default_factory=dict)
    cosine_small_norm: float | None = None  # min cosine over the small-norm observations (not gated)
    small_norm_observations: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        tok = f", tokens identical {self.token_match:.3f}" if self.token_match is not None else ""
        verdict = "PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"
        return (f"{self.compared}: max abs {self.max_abs:.3g}, cosine {self.cosine:.6f}, action L1 mean "
                f"{self.action_l1_mean:.3g} / max {self.action_l1_max:.3g}{tok} -> {verdict}")


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-observation cosine of `a` (reference) and `b`, and the reference norms."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    return np.where((na == 0) & (nb == 0), 1.0, cos), na  # two zero vectors agree


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosines(a, b)[0].min())


def gated_cosine(a: np.ndarray, b: np.ndarray) -> tuple[float, float | None, int]:
    """(min cosine over normal-norm observations, min over small-norm ones or None, how many small)."""
    cos, norm = cosines(a, b)
    small = norm < SMALL_NORM_FRACTION * np.median(norm)
    if small.all():
        return float(cos.min()), None, 0
    return float(cos[~small].min()), (float(cos[small].min()) if small.any() else None), int(small.sum())


def compare(head: str, ref: dict, got: dict, tolerance: Tolerance) -> ParityReport:
    """Build the report from torch outputs `ref` and artifact outputs `got` (numpy arrays).

    Both dicts hold "actions" (B, K, A) normalised; a tokens head adds "bins" (B, N) free-running
    and "bin_logits" (B, N, n_bins) teacher-forced.
    """
    key = "bin_logits" if head == "tokens" else "actions"
    r, g = np.asarray(ref[key], np.float64), np.asarray(got[key], np.float64)
    if r.shape != g.shape:
        raise ValueError(f"{key}: artifact shape {g.shape} differs from torch {r.shape}")
    diff = np.abs(r - g)
    act = np.abs(np.asarray(ref["actions"], np.float64) - np.asarray(got["actions"], np.float64))
    token_match = forced_match = None
    if head == "tokens":
        token_match = float((np.asarray(ref["bins"]) == np.asarray(got["bins"])).mean())
        if "bins_teacher_forced" in got:
            forced_match = float((np.asarray(ref["bins"]) == np.asarray(got["bins_teacher_forced"])).mean())
    cos, cos_small, n_small = gated_cosine(r, g) if key == "actions" else (min_cosine(r, g), None, 0)
    report = ParityReport(
        head=head, compared=key, n_observations=int(r.shape[0]),
        max_abs=float(diff.max()), mean_abs=float(diff.mean()), cosine=cos,
        cosine_small_norm=cos_small, small_norm_observations=n_small,
        action_l1_mean=float(act.mean()), action_l1_max=float(act.max()), token_match=token_match,
        token_match_teacher_forced=forced_match,
        tolerance=tolerance.to_dict(), passed=True,
    )
    report.failures = judge(report, tolerance)
    report.passed = not report.failures
    return report


def judge(r: ParityReport, t: Tolerance) -> list[str]:
    """Human-readable reasons the report misses its tolerance (empty = pass)."""
    out = []
    if not np.isfinite([r.max_abs, r.cosine, r.action_l1_mean]).all():
        out.append("non-finite outputs")
    if t.max_abs is not None and r.max_abs > t.max_abs:
        out.append(f"max abs {r.max_abs:.3g} > {t.max_abs:.3g}")
    if t.min_cosine is not None and r.cosine < t.min_cosine:
        out.append(f"cosine {r.cosine:.6f} < {t.min_cosine}")
    if t.max_action_l1 is not None and r.action_l1_mean > t.max_action_l1:
        out.append(f"action L1 mean {r.action_l1_mean:.3g} > {t.max_action_l1:.3g}")
    if t.min_token_match is not None and r.token_match is not None and r.token_match < t.min_token_match:
        out.append(f"identical action tokens {r.token_match:.3f} < {t.min_token_match}")
    return out
