"""Wilson score interval: closed forms, published values, monotonicity, input validation."""

from __future__ import annotations

import math

import pytest

from vla_compress.evaluate.stats import wilson_interval

Z = 1.959963984540054


def test_zero_successes_closed_form():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(Z * Z / (10 + Z * Z), abs=1e-12)
    assert hi == pytest.approx(0.2775, abs=1e-4)


def test_all_successes_closed_form():
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0, abs=1e-12) and hi <= 1.0  # 1 - 1e-16 from rounding; never above 1
    assert lo == pytest.approx(10 / (10 + Z * Z), abs=1e-12)
    assert lo == pytest.approx(0.7225, abs=1e-4)


def test_half_closed_form():
    lo, hi = wilson_interval(5, 10)
    n, p = 10, 0.5
    denom = 1 + Z * Z / n
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom
    assert (lo, hi) == (pytest.approx(0.5 - half, abs=1e-12), pytest.approx(0.5 + half, abs=1e-12))
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_other_z():
    # z = 1 (about 68%): 0/4 -> upper = 1 / (4 + 1)
    assert wilson_interval(0, 4, z=1.0)[1] == pytest.approx(0.2)


def test_monotonic_in_successes_and_narrowing_with_n():
    bounds = [wilson_interval(k, 20) for k in range(21)]
    for (lo0, hi0), (lo1, hi1) in zip(bounds, bounds[1:]):
        assert lo1 > lo0 or lo0 == lo1 == 0.0
        assert hi1 > hi0
    for k, (lo, hi) in enumerate(bounds):
        assert 0.0 <= lo <= k / 20 <= hi <= 1.0
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 40, 160, 640))]
    assert widths == sorted(widths, reverse=True)


def test_empty_sample_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("k, n", [(-1, 10), (11, 10), (0, -1), (3, 2)])
def test_bad_input_raises_value_error(k, n):
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(k, n)
