"""The likelihood-ratio threshold: known answers for each ordering of the two stds, and its optimality."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from oserve.guard.threshold import (
    GaussianFit,
    likelihood_ratio_region,
    log_ratio_coefficients,
    region_for_threshold,
)


def _log_ratio(null: GaussianFit, alt: GaussianFit, x: float) -> float:
    return float(norm.logpdf(x, alt.mean, alt.std) - norm.logpdf(x, null.mean, null.std))


def test_equal_stds_give_the_one_sided_normal_quantile():
    region = likelihood_ratio_region(GaussianFit(0.0, 1.0), GaussianFit(2.0, 1.0), 0.05)
    assert region.intervals == ((pytest.approx(1.6448536, abs=1e-6), math.inf),)
    lower = likelihood_ratio_region(GaussianFit(0.0, 1.0), GaussianFit(-2.0, 1.0), 0.05)
    assert lower.intervals == ((-math.inf, pytest.approx(-1.6448536, abs=1e-6)),)


def test_narrower_leak_gaussian_gives_a_bounded_interval():
    # equal means, s1 < s0: the ratio depends on x^2 only, so the region is |x| <= c with P0 = alpha,
    # c = s0 * ppf(1/2 + alpha/2) = 2 * 0.0627068 for alpha = 0.05
    region = likelihood_ratio_region(GaussianFit(0.0, 2.0), GaussianFit(0.0, 1.0), 0.05)
    (lo, hi), = region.intervals
    assert hi == pytest.approx(2 * norm.ppf(0.525), abs=1e-9) and lo == pytest.approx(-hi, abs=1e-9)


def test_wider_leak_gaussian_gives_two_tails():
    # equal means, s1 > s0: the region is |x| >= 1.959964 (two-sided 5 %)
    region = likelihood_ratio_region(GaussianFit(0.0, 1.0), GaussianFit(0.0, 2.0), 0.05)
    (lo_tail, hi_tail) = region.intervals
    assert lo_tail == (-math.inf, pytest.approx(-1.959964, abs=1e-6))
    assert hi_tail == (pytest.approx(1.959964, abs=1e-6), math.inf)


@pytest.mark.parametrize("alt_std", [0.3, 0.8])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_region_has_size_alpha_and_the_ratio_is_equal_at_its_ends(alt_std, alpha):
    null, alt = GaussianFit(-2.0, 0.5), GaussianFit(-0.6, alt_std)
    region = likelihood_ratio_region(null, alt, alpha)
    assert region.probability(null) == pytest.approx(alpha, abs=1e-9)
    ends = [e for interval in region.intervals for e in interval if math.isfinite(e)]
    assert len(ends) == 2
    for end in ends:  # Neyman-Pearson: the region's boundary is a level set of the ratio
        assert _log_ratio(null, alt, end) == pytest.approx(region.log_ratio_threshold, abs=1e-7)
    # and inside the region the ratio is above the threshold, outside below
    for x in (-3.0, -2.0, -1.2, -0.6, 0.0):
        assert region.contains(x) == (_log_ratio(null, alt, x) >= region.log_ratio_threshold)


@pytest.mark.parametrize("alt_std", [0.3, 0.5, 0.8])
def test_region_is_at_least_as_powerful_as_the_one_sided_test_of_the_same_size(alt_std):
    null, alt, alpha = GaussianFit(-2.0, 0.5), GaussianFit(-0.9, alt_std), 0.05
    power = likelihood_ratio_region(null, alt, alpha).probability(alt)
    one_sided = alt.probability(float(norm.isf(alpha, null.mean, null.std)), math.inf)
    assert power >= one_sided - 1e-12


def test_coefficients_reproduce_the_log_density_ratio():
    null, alt = GaussianFit(1.0, 0.7), GaussianFit(-0.5, 1.3)
    a, b, c = log_ratio_coefficients(null, alt)
    for x in (-2.0, 0.0, 0.4, 3.0):
        assert a * x * x + b * x + c == pytest.approx(_log_ratio(null, alt, x), abs=1e-12)


def test_threshold_above_the_ratio_maximum_gives_an_empty_region():
    null, alt = GaussianFit(0.0, 2.0), GaussianFit(0.0, 1.0)
    a, b, c = log_ratio_coefficients(null, alt)
    assert region_for_threshold(null, alt, c - b * b / (4 * a) + 1.0).intervals == ()


def test_bad_alpha_and_tiny_samples_are_rejected():
    with pytest.raises(ValueError, match="alpha"):
        likelihood_ratio_region(GaussianFit(0, 1), GaussianFit(1, 1), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        GaussianFit.from_samples([-1.0])
    assert GaussianFit.from_samples([-1.0, -1.0]).std > 0  # floored, not zero


def test_fit_is_mean_and_unbiased_std():
    fit = GaussianFit.from_samples([-1.0, -2.0, -3.0])
    assert (fit.mean, fit.std, fit.n) == (pytest.approx(-2.0), pytest.approx(1.0), 3)
