"""The sequential gate: its confidence sequence keeps the stated error rate across looks (simulated
paired Bernoulli runs at known differences), it stops early on clear cases, and it refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.sequential import BettingCS, RoundPlan, SequentialGate, paired_in_order


def simulate(base_only: float, variant_only: float, runs: int, budget: float, cap: int = 500, look: int = 10,
             seed: int = 0, confidence: float = 0.95) -> tuple[dict, list[int]]:
    """Verdict counts and episodes used over `runs` sequential gates on synthetic paired outcomes
    with P(baseline only succeeds) = base_only, P(variant only) = variant_only (true difference
    variant_only - base_only), stopping at the first decided look or at `cap` pairs."""
    rng = np.random.default_rng(seed)
    verdicts = {"pass": 0, "fail": 0, "inconclusive": 0}
    used = []
    for _ in range(runs):
        g = SequentialGate(budget, confidence)
        while g.verdict == "continue" and g.episodes < cap:
            u = rng.random(look)
            both = rng.random(look) < 0.6  # concordant pairs: both succeed or both fail
            pairs = [(True, False) if x < base_only else (False, True) if x < base_only + variant_only
                     else (bool(c), bool(c)) for x, c in zip(u, both)]
            g.add(pairs)
        verdicts[g.close()] += 1
        used.append(g.episodes)
    return verdicts, used


def test_false_pass_rate_at_the_budget_is_within_the_level():
    """True drop exactly at the 5-point budget (10% regressions, 5% improvements): passing is an
    error; with looks every 10 pairs up to 500 it must happen in at most alpha = 5% of runs."""
    verdicts, _ = simulate(0.10, 0.05, runs=200, budget=0.05)
    assert verdicts["pass"] / 200 <= 0.05, verdicts


def test_false_pass_rate_beyond_the_budget_and_false_fail_rate_within_it():
    beyond, _ = simulate(0.12, 0.04, runs=200, budget=0.05, seed=1)  # true drop 8 points
    assert beyond["pass"] / 200 <= 0.05, beyond
    within, _ = simulate(0.05, 0.05, runs=200, budget=0.05, seed=2)  # no drop at all: failing is an error
    assert within["fail"] / 200 <= 0.05, within
    assert within["pass"] / 200 >= 0.6, within  # and it mostly decides within 500 pairs


def test_a_clear_case_stops_early():
    """Identical outcomes (a faithful export) pass a 5-point budget after 150 pairs; the fixed gate's
    default recipe spends 500 (50 per MT10 task). A large drop fails within a few looks."""
    g = SequentialGate(0.05, 0.95)
    while g.verdict == "continue":
        g.add([(True, True), (False, False)] * 5)
    assert g.verdict == "pass" and g.episodes == 150
    verdicts, used = simulate(0.30, 0.0, runs=20, budget=0.05, seed=3)
    assert verdicts["fail"] == 20 and max(used) <= 100


def test_the_cs_covers_the_mean_at_every_look():
    """Time-uniform coverage: the true mean stays inside the CS at every look in >= 95% of runs."""
    rng = np.random.default_rng(4)
    misses = 0
    for _ in range(100):
        cs = BettingCS(0.05)
        covered = True
        for _ in range(30):
            cs.update(rng.random(10) < 0.3)
            lo, hi = cs.interval()
            covered &= lo <= 0.3 <= hi
        misses += not covered
    assert misses <= 5


def test_the_gate_records_its_looks_and_refuses_bad_input():
    g = SequentialGate(0.1, 0.9)
    g.add([(True, True)] * 30)
    d = g.to_dict()
    assert d["episodes"] == 30 and d["looks"][0]["episodes"] == 30 and "Waudby-Smith" in d["method"]
    assert g.close() in ("pass", "inconclusive")
    with pytest.raises(ConfigError, match="max_drop"):
        SequentialGate(1.5)
    with pytest.raises(ConfigError, match="1 <= episodes per round <= cap"):
        RoundPlan(0, 10)
    assert RoundPlan(5, 12).rounds() == [(0, 5), (5, 5), (10, 2)]


def test_pairs_come_round_robin_in_episode_order():
    base = [{"task": t, "seed": s, "success": True} for t in ("a", "b") for s in (3, 1, 2)]
    var = [{"task": t, "seed": s, "success": s != 1} for t in ("a", "b") for s in (1, 2, 3)]
    assert paired_in_order(base, var) == [(True, False), (True, False)] + [(True, True)] * 4
    with pytest.raises(ConfigError, match="same episodes"):
        paired_in_order(base, var[:-1])
