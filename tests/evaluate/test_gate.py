"""The regression gate on synthetic paired outcome tables: fail, pass, inconclusive (with episodes)."""

from __future__ import annotations

import pytest

from vla_compress.errors import ConfigError
from vla_compress.evaluate.gate import PairedCounts, gate, pair_outcomes, paired_difference_interval


def _episodes(outcomes: list[bool], task: str = "t") -> list[dict]:
    return [{"task": task, "seed": i, "success": s} for i, s in enumerate(outcomes)]


def test_newcombe_published_example():
    # Newcombe (1998), Stat Med 17:873, paired example: 44 pairs (12, 9, 2, 21); method 10 gives
    # theta = 0.1591 with a 95% interval of about (0.018, 0.289)
    c = PairedCounts(both=12, base_only=2, variant_only=9, neither=21)
    diff, lo, hi = paired_difference_interval(c, 0.95)
    assert diff == pytest.approx(7 / 44)
    assert lo == pytest.approx(0.018, abs=0.002)
    assert hi == pytest.approx(0.289, abs=0.002)


def test_clear_regression_fails():
    base = _episodes([True] * 80 + [False] * 20)
    var = _episodes([True] * 40 + [False] * 60)  # 40 successes lost, none gained
    g = gate(pair_outcomes(base, var), max_drop=0.10, confidence=0.95)
    assert g.verdict == "fail"
    assert g.ci[1] < -0.10
    assert "exceeds" in g.message


def test_clear_non_regression_passes():
    outcomes = [True] * 70 + [False] * 30
    var = list(outcomes)
    var[0], var[75] = False, True  # one lost, one gained: no net change
    g = gate(pair_outcomes(_episodes(outcomes), _episodes(var)), max_drop=0.10)
    assert g.verdict == "pass"
    assert g.ci[0] >= -0.10
    assert g.difference == 0


def test_borderline_is_inconclusive_with_episodes_needed():
    base = _episodes([True] * 35 + [False] * 15)
    var = _episodes([True] * 30 + [False] * 5 + [True] * 2 + [False] * 13)  # -6 points on 50 episodes
    g = gate(pair_outcomes(base, var), max_drop=0.10, confidence=0.95, tasks=5)
    assert g.verdict == "inconclusive"
    assert g.ci[0] < -0.10 < g.ci[1]
    assert g.episodes_needed and g.episodes_needed > 50
    assert g.episodes_per_task_needed == -(-g.episodes_needed // 5)
    assert "run more episodes" in g.message
    # with the suggested number of episodes at the same rates, the gate decides
    k = g.episodes_needed // 50 + 1
    g2 = gate(PairedCounts(30 * k, 5 * k, 2 * k, 13 * k), max_drop=0.10)
    assert g2.verdict == "pass"


def test_pairing_matters():
    # identical marginal rates, but the variant fails exactly where the baseline succeeded
    c_paired = PairedCounts(both=50, base_only=5, variant_only=5, neither=40)
    c_swapped = PairedCounts(both=0, base_only=55, variant_only=55, neither=-10 + 10)
    _, lo1, hi1 = paired_difference_interval(c_paired)
    _, lo2, hi2 = paired_difference_interval(c_swapped)
    assert hi1 - lo1 < hi2 - lo2  # concordant pairs give a narrower interval


def test_mismatched_episodes_are_an_error():
    with pytest.raises(ConfigError, match="same episodes"):
        pair_outcomes(_episodes([True, False]), _episodes([True, False, True]))
    with pytest.raises(ConfigError, match="max_drop"):
        gate(PairedCounts(1, 0, 0, 1), max_drop=1.5)
