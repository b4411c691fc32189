"""The success-rate regression gate: paired binary outcomes, Newcombe's interval, a three-way verdict.

The baseline and a variant run the same (task, seed) episodes, so each episode gives a pair of
outcomes. Pairing matters: most placements are easy or hard for both policies, and treating the two
success rates as independent would overstate the uncertainty of their difference. The interval for
the difference of paired proportions is Newcombe's (1998) method 10: Wilson score intervals of
each marginal rate combined with the phi correlation of the pairs. It behaves at 0% and 100%
(where a Wald interval collapses to zero width) and is what the statistics literature recommends
for small paired samples.

Verdict, for a budget B (the largest acceptable drop) and an interval [lo, hi] for
d = variant - baseline at the recipe's confidence (two-sided):
  pass          lo >= -B  the drop is within budget with that confidence
  fail          hi <  -B  the drop exceeds the budget with that confidence
  inconclusive  otherwise, with an estimate of the episodes that would decide it

`decide` turns the gates of a run's variants (manifest.Variant records), the deployed variant's
artifact status and its latency/memory estimate on the target into the run's verdict and exit code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Iterable

from ..errors import ConfigError
from .stats import wilson_interval

if TYPE_CHECKING:  # pragma: no cover
    from ..manifest import Variant

MAX_EPISODES_PER_TASK = 1000  # the evaluation seed range per task (evaluate/seeds.py)


@dataclass(frozen=True)
class PairedCounts:
    """Counts of (baseline, variant) outcomes over the same episodes."""

    both: int  # baseline success, variant success
    base_only: int  # baseline success, variant failure (a regression on that episode)
    variant_only: int  # baseline failure, variant success
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.base_only + self.variant_only + self.neither

    @property
    def baseline_rate(self) -> float:
        return (self.both + self.base_only) / self.n if self.n else 0.0

    @property
    def variant_rate(self) -> float:
        return (self.both + self.variant_only) / self.n if self.n else 0.0


def pair_outcomes(baseline: Iterable[dict], variant: Iterable[dict]) -> PairedCounts:
    """Match episodes by (task, seed); both runs must cover exactly the same episodes."""
    b = {(e["task"], int(e["seed"])): bool(e["success"]) for e in baseline}
    v = {(e["task"], int(e["seed"])): bool(e["success"]) for e in variant}
    if set(b) != set(v):
        only_b, only_v = sorted(set(b) - set(v))[:3], sorted(set(v) - set(b))[:3]
        raise ConfigError(f"the gate needs the baseline and the variant on the same episodes; baseline-only "
                          f"{only_b}, variant-only {only_v}")
    if not b:
        raise ConfigError("the gate needs at least one paired episode")
    both = sum(b[k] and v[k] for k in b)
    base_only = sum(b[k] and not v[k] for k in b)
    variant_only = sum(v[k] and not b[k] for k in b)
    return PairedCounts(both, base_only, variant_only, len(b) - both - base_only - variant_only)


def z_value(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def paired_difference_interval(c: PairedCounts, confidence: float = 0.95) -> tuple[float, float, float]:
    """(difference, lower, upper) for variant rate - baseline rate (Newcombe 1998, method 10)."""
    n = c.n
    if n == 0:
        raise ConfigError("no paired episodes")
    z = z_value(confidence)
    p1, p2 = c.baseline_rate, c.variant_rate
    l1, u1 = wilson_interval(c.both + c.base_only, n, z)
    l2, u2 = wilson_interval(c.both + c.variant_only, n, z)
    a, b, cc, d = c.both, c.base_only, c.variant_only, c.neither
    denom = (a + b) * (cc + d) * (a + cc) * (b + d)
    phi = (a * d - b * cc) / math.sqrt(denom) if denom > 0 else 0.0
    diff = p2 - p1
    delta = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    eps = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return diff, max(-1.0, diff - delta), min(1.0, diff + eps)


@dataclass(frozen=True)
class GateResult:
    verdict: str  # pass | fail | inconclusive
    baseline_rate: float
    variant_rate: float
    difference: float
    ci: tuple[float, float]
    confidence: float
    max_drop: float
    episodes: int
    counts: dict
    episodes_needed: int | None  # total paired episodes that would likely decide an inconclusive gate
    episodes_per_task_needed: int | None
    message: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def gate(counts: PairedCounts, max_drop: float, confidence: float = 0.95, tasks: int = 1) -> GateResult:
    """The three-way verdict for one variant against the baseline (see the module docstring)."""
    if not 0 <= max_drop < 1:
        raise ConfigError(f"max_drop must be in [0, 1), got {max_drop}")
    diff, lo, hi = paired_difference_interval(counts, confidence)
    n = counts.n
    needed = per_task = None
    pct = f"{confidence:.0%}"
    ci_txt = f"[{lo:+.1%}, {hi:+.1%}]"
    if lo >= -max_drop:
        verdict = "pass"
        message = (f"success {counts.variant_rate:.1%} vs {counts.baseline_rate:.1%} (difference {diff:+.1%}, "
                   f"{pct} CI {ci_txt}): the drop is within the {max_drop:.0%} budget")
    elif hi < -max_drop:
        verdict = "fail"
        message = (f"success {counts.variant_rate:.1%} vs {counts.baseline_rate:.1%} (difference {diff:+.1%}, "
                   f"{pct} CI {ci_txt}): the drop exceeds the {max_drop:.0%} budget")
    else:
        verdict = "inconclusive"
        margin = diff + max_drop  # > 0: the estimate is within budget, the lower bound is not
        half = (diff - lo) if margin > 0 else (hi - diff)
        if abs(margin) > 1e-9 and half > 0:
            # interval widths shrink as 1/sqrt(n) at fixed rates and discordance
            needed = math.ceil(n * (half / abs(margin)) ** 2)
            per_task = math.ceil(needed / max(1, tasks))
            if per_task > MAX_EPISODES_PER_TASK:
                needed = per_task = None
        more = (f"run about {per_task} episodes per task ({needed} in all)" if needed
                else "the observed difference sits on the budget: no affordable number of episodes decides it")
        message = (f"inconclusive — run more episodes: difference {diff:+.1%}, {pct} CI {ci_txt} straddles the "
                   f"-{max_drop:.0%} budget; {more}")
    return GateResult(verdict, counts.baseline_rate, counts.variant_rate, diff, (lo, hi), confidence, max_drop, n,
                      asdict(counts), needed, per_task, message)


# --- the run's verdict ---------------------------------------------------------------------------
EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}  # the exit codes of `vla-compress compress`


def target_estimate(profile: dict, name: str) -> dict | None:
    """The first estimate of variant `name` on the recipe's target that did not fail, or None."""
    rows = [r for r in (profile.get("estimated", {}).get(name) or {}).get("rows", []) if not r.get("error")]
    return rows[0] if rows else None


def decide(variants: dict[str, "Variant"], evals: dict, profile: dict, budgets: dict, deploy: str,
           target: dict, sequential: dict | None = None) -> dict:
    """Gate every evaluated variant against the baseline; the run's verdict is the deployed
    variant's (its artifact status, its gate, and the latency/memory budgets on the target).
    `sequential`: the gate records of a sequential evaluation (evaluate/sequential.py), used as
    they are instead of a fixed-design gate."""
    n_tasks = len(evals["baseline"]["per_task"]) if "baseline" in evals else 1
    gates = {}
    for name, r in evals.items():
        if name == "baseline":
            continue
        if sequential and name in sequential:
            gates[name] = sequential[name]
            continue
        g = gate(pair_outcomes(evals["baseline"]["episodes"], r["episodes"]), budgets["max_success_drop"],
                 budgets["confidence"], n_tasks)
        gates[name] = g.to_dict()
    reasons, verdict = [], "pass"
    v = variants.get(deploy)
    if v is None:
        return {"deploy": deploy, "verdict": "fail", "reasons": [f"variant {deploy!r} was not produced"],
                "gates": gates, "exit_code": EXIT["fail"]}
    if not v.runnable:
        verdict = "fail"
        failures = "; ".join((v.parity or {}).get("failures", []))
        reasons.append(f"{deploy}: artifact {v.status}" + (f" ({v.error})" if v.error else f" parity: {failures}"))
    if deploy != "baseline":
        g = gates.get(deploy)
        if g is None:
            verdict = "fail" if verdict == "fail" else "inconclusive"
            reasons.append(f"{deploy}: no closed-loop success measured ({v.eval_skipped or 'not evaluated'})")
        else:
            if g["verdict"] == "fail":
                verdict = "fail"
            elif g["verdict"] == "inconclusive" and verdict == "pass":
                verdict = "inconclusive"
            reasons.append(f"{deploy}: {g['message']}")
    est = target_estimate(profile, deploy)
    if est is not None:
        lat, hz = est["p50_ms"], est["control_hz"]
        if budgets["max_latency_ms"] is not None:
            ok = lat <= budgets["max_latency_ms"]
            reasons.append(f"estimated latency on {target['hardware']} ({target['runtime']}, {target['precision']}): "
                           f"{lat:.1f} ms {'<=' if ok else '>'} budget {budgets['max_latency_ms']} ms")
            verdict = verdict if ok else "fail"
        if budgets["min_control_hz"] is not None:
            ok = hz >= budgets["min_control_hz"]
            reasons.append(f"estimated control rate on {target['hardware']}: {hz:.0f} Hz {'>=' if ok else '<'} "
                           f"required {budgets['min_control_hz']} Hz")
            verdict = verdict if ok else "fail"
        if est.get("fits") is False:
            verdict = "fail"
            reasons.append(f"does not fit in {target['hardware']}'s memory (estimated)")
    elif budgets["max_latency_ms"] is not None or budgets["min_control_hz"] is not None:
        reasons.append(f"no latency estimate for {deploy} on {target['hardware']}: latency budget not checked")
        verdict = "fail" if verdict == "fail" else "inconclusive"
    return {"deploy": deploy, "verdict": verdict, "reasons": reasons, "gates": gates,
            "target_estimate": est, "exit_code": EXIT[verdict]}
