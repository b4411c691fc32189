"""A sequential gate: evaluate in rounds and stop as soon as the verdict is decided.

The fixed gate (gate.py) looks once, after a fixed number of paired episodes; looking again after
more episodes with the same interval would inflate its error rate. This gate instead keeps an
*always-valid* confidence sequence (CS) for the mean paired difference d = variant - baseline:
a sequence of intervals that contains the true mean at every episode count simultaneously with
probability >= `confidence`, so the run may stop at any look (data-dependent stopping included)
without losing the stated confidence.

The CS is the hedged betting confidence sequence of Waudby-Smith & Ramdas, "Estimating means of
bounded random variables by betting", JRSS-B 86(1), 2024 (arXiv 2010.09686), Theorem 3 with the
predictable plug-in bets of its eq. (26)-(27) and truncation c = 1/2. Each episode pair gives
d in {-1, 0, 1}, mapped to x = (d + 1) / 2 in [0, 1]. For a candidate mean m, two gamblers bet
that the mean is above and below m; their capital K_t(m) = max(K+_t(m), K-_t(m)) / 2 is a
nonnegative supermartingale when m is the true mean, so by Ville's inequality it reaches 1/alpha
with probability at most alpha, ever. The CS at episode t is every m whose capital never reached
1/alpha (a running intersection, which stays valid). It adapts to the variance: pairs that mostly
agree (d = 0) shrink it fast, unlike a Hoeffding bound. Over interleaved tasks the episodes are not
identically distributed; the CS then covers the running average of the per-episode means, which
over round-robin rounds of every task is the task-averaged difference the fixed gate estimates.

Verdict at each look, for a budget B (the largest acceptable drop) and the CS [lo, hi] of d:
  pass          lo >= -B
  fail          hi <  -B
  continue      otherwise, until the cap on episodes; at the cap the verdict is "inconclusive"
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ConfigError

GRID = 2001  # candidate means on [0, 1]: the CS is resolved to 1/2000 of the x-range (1/1000 of d)
TRUNCATION = 0.5  # c in the paper: bets never risk more than half the capital


class BettingCS:
    """The hedged betting confidence sequence for the mean of values in [0, 1] (see the module docstring)."""

    def __init__(self, alpha: float, grid: int = GRID):
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.m = np.linspace(0.0, 1.0, grid)[1:-1]  # open interval: bets at m = 0 or 1 are degenerate
        self.log_up = np.zeros_like(self.m)  # log K+ (betting the mean is above m)
        self.log_down = np.zeros_like(self.m)
        self.alive = np.ones_like(self.m, dtype=bool)  # running intersection
        self.t = 0
        self.sum_x = 0.0
        self.sum_sq = 0.0  # sum of (x_i - mu_hat_{i-1})^2, the plug-in variance's numerator

    def update(self, xs: np.ndarray | list[float]) -> None:
        threshold = math.log(1.0 / self.alpha)
        for x in np.asarray(xs, dtype=np.float64).ravel():
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"values must be in [0, 1], got {x}")
            i = self.t + 1
            mu_prev = (0.5 + self.sum_x) / i  # mu_hat_{i-1} (a prior of 1/2 with weight 1)
            var_prev = (0.25 + self.sum_sq) / i  # sigma_hat^2_{i-1}
            lam = math.sqrt(2.0 * math.log(2.0 / self.alpha) / (var_prev * i * math.log(1.0 + i)))
            up = np.minimum(lam, TRUNCATION / self.m)
            down = np.minimum(lam, TRUNCATION / (1.0 - self.m))
            self.log_up += np.log1p(up * (x - self.m))
            self.log_down += np.log1p(-down * (x - self.m))
            hedged = np.logaddexp(self.log_up, self.log_down) - math.log(2.0)
            self.alive &= hedged < threshold
            self.t = i
            self.sum_sq += (x - mu_prev) ** 2
            self.sum_x += x

    def interval(self) -> tuple[float, float]:
        """The current CS for the mean of x (the whole range before any data)."""
        if not self.alive.any():  # numerically empty: the last surviving point estimate
            c = self.sum_x / max(self.t, 1)
            return c, c
        kept = self.m[self.alive]
        step = self.m[1] - self.m[0]
        return max(0.0, float(kept[0]) - step), min(1.0, float(kept[-1]) + step)


@dataclass
class SequentialGate:
    """Paired outcomes fed in looks; `verdict` is pass/fail once decided, "continue" before, and
    "inconclusive" when `close()` is called at the cap undecided."""

    max_drop: float
    confidence: float = 0.95
    looks: list[dict] = field(default_factory=list)
    verdict: str = "continue"

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise ConfigError(f"max_drop must be in [0, 1), got {self.max_drop}")
        self.cs = BettingCS(1.0 - self.confidence)
        self.counts = {"both": 0, "base_only": 0, "variant_only": 0, "neither": 0}

    @property
    def episodes(self) -> int:
        return self.cs.t

    def difference_interval(self) -> tuple[float, float]:
        lo, hi = self.cs.interval()
        return 2.0 * lo - 1.0, 2.0 * hi - 1.0

    def add(self, pairs: list[tuple[bool, bool]]) -> str:
        """One look: (baseline success, variant success) of each new paired episode; returns the verdict."""
        if self.verdict != "continue":
            raise ConfigError(f"the sequential gate already decided ({self.verdict})")
        for b, v in pairs:
            key = "both" if b and v else "base_only" if b else "variant_only" if v else "neither"
            self.counts[key] += 1
        self.cs.update([(int(v) - int(b) + 1) / 2.0 for b, v in pairs])
        lo, hi = self.difference_interval()
        if lo >= -self.max_drop:
            self.verdict = "pass"
        elif hi < -self.max_drop:
            self.verdict = "fail"
        n = self.episodes
        diff = (self.counts["variant_only"] - self.counts["base_only"]) / n if n else 0.0
        self.looks.append({"episodes": n, "difference": diff, "cs": [lo, hi], "verdict": self.verdict})
        return self.verdict

    def close(self) -> str:
        """At the cap on episodes: an undecided gate is inconclusive."""
        if self.verdict == "continue":
            self.verdict = "inconclusive"
        return self.verdict

    def message(self) -> str:
        n = self.episodes
        lo, hi = self.difference_interval()
        base = (self.counts["both"] + self.counts["base_only"]) / n if n else 0.0
        var = (self.counts["both"] + self.counts["variant_only"]) / n if n else 0.0
        cs = f"{self.confidence:.0%} confidence sequence [{lo:+.1%}, {hi:+.1%}] after {n} paired episodes"
        what = {"pass": f"the drop is within the {self.max_drop:.0%} budget",
                "fail": f"the drop exceeds the {self.max_drop:.0%} budget",
                "inconclusive": f"undecided at the cap: the sequence straddles the -{self.max_drop:.0%} budget",
                "continue": "undecided so far"}[self.verdict]
        return f"success {var:.1%} vs {base:.1%}, {cs}: {what}"

    def to_dict(self) -> dict:
        lo, hi = self.difference_interval()
        return {"verdict": self.verdict, "method": "hedged betting confidence sequence (Waudby-Smith & Ramdas 2024)",
                "confidence": self.confidence, "max_drop": self.max_drop, "episodes": self.episodes,
                "counts": dict(self.counts), "cs": [lo, hi], "looks": list(self.looks), "message": self.message()}


@dataclass(frozen=True)
class RoundPlan:
    """How a sequential evaluation proceeds: `per_round` episodes per task each look, at most `cap`
    episodes per task in all."""

    per_round: int
    cap: int

    def __post_init__(self) -> None:
        if self.per_round < 1 or self.cap < self.per_round:
            raise ConfigError(f"a sequential evaluation needs 1 <= episodes per round <= cap, got "
                              f"{self.per_round} and {self.cap}")

    def rounds(self) -> list[tuple[int, int]]:
        """(first episode, episodes) of every round."""
        out, first = [], 0
        while first < self.cap:
            n = min(self.per_round, self.cap - first)
            out.append((first, n))
            first += n
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def paired_in_order(baseline: list[dict], variant: list[dict]) -> list[tuple[bool, bool]]:
    """(baseline, variant) success of each (task, seed) episode both ran, round-robin over tasks in
    episode order (a task's episode i has its i-th seed: evaluate/seeds.py), as evaluate() runs them."""
    b = {(e["task"], int(e["seed"])): bool(e["success"]) for e in baseline}
    v = {(e["task"], int(e["seed"])): bool(e["success"]) for e in variant}
    if set(b) != set(v):
        raise ConfigError("the sequential gate needs the baseline and the variant on the same episodes")
    rank: dict[tuple[str, int], int] = {}
    for task in sorted({t for t, _ in b}):
        for i, seed in enumerate(sorted(s for t, s in b if t == task)):
            rank[(task, seed)] = i
    keys = sorted(b, key=lambda k: (rank[k], k[0]))
    return [(b[k], v[k]) for k in keys]
