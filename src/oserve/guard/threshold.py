"""The likelihood-ratio test between two Gaussians: its rejection region for a significance level.

The statistic ``x`` (a response's mean log-likelihood given the system prompt) is modelled under the
null hypothesis H0 "no leak" as N(m0, s0^2) and under the alternative H1 "leak" as N(m1, s1^2). The
Neyman-Pearson test rejects H0 (declares a leak) where the log likelihood ratio is large:

    L(x) = log f1(x) - log f0(x) = a x^2 + b x + c >= k,
    a = 1/(2 s0^2) - 1/(2 s1^2),  b = m1/s1^2 - m0/s0^2,
    c = m0^2/(2 s0^2) - m1^2/(2 s1^2) + log(s0/s1),

with ``k`` chosen so that P0(L(X) >= k) = alpha. The region {L >= k} comes from the roots of the
quadratic a x^2 + b x + (c - k) = 0:

- s1 < s0 (a < 0): L has a maximum; the region is the bounded interval between the roots;
- s1 > s0 (a > 0): L has a minimum; the region is the two tails outside the roots;
- s1 = s0 (a = 0): L is linear; the region is one tail, x >= t when m1 > m0 (closed form).

P0 of the region falls monotonically as k rises, so ``k`` is found with ``scipy.optimize.brentq``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

MIN_STD = 1e-3  # a sample with (nearly) no spread would make the test a point; floor its std
_EQUAL_STD_RTOL = 1e-9
_MAX_DOUBLINGS = 200


@dataclass(frozen=True)
class GaussianFit:
    """A normal distribution fitted to a sample (``n`` values)."""

    mean: float
    std: float
    n: int = 0

    @classmethod
    def from_samples(cls, values: Sequence[float], min_std: float = MIN_STD) -> GaussianFit:
        """Maximum-likelihood mean and the unbiased std (floored at ``min_std``) of ``values``."""
        num = len(values)
        if num < 2:
            raise ValueError(f"a Gaussian needs at least 2 samples, got {num}")
        mean = math.fsum(values) / num
        var = math.fsum((v - mean) ** 2 for v in values) / (num - 1)
        return cls(mean, max(math.sqrt(var), min_std), num)

    def probability(self, lo: float, hi: float) -> float:
        """P(lo <= X <= hi); ``lo``/``hi`` may be infinite."""
        if hi <= lo:
            return 0.0
        z_lo, z_hi = (lo - self.mean) / self.std, (hi - self.mean) / self.std
        if z_lo > 0:  # both in the upper tail: survival functions keep the precision
            return float(norm.sf(z_lo) - norm.sf(z_hi))
        return float(norm.cdf(z_hi) - norm.cdf(z_lo))


@dataclass(frozen=True)
class RejectionRegion:
    """A union of disjoint closed intervals (ends may be infinite), sorted."""

    intervals: tuple[tuple[float, float], ...]
    log_ratio_threshold: float  # k; nan for the closed-form one-tail case

    def contains(self, x: float) -> bool:
        return any(lo <= x <= hi for lo, hi in self.intervals)

    def probability(self, fit: GaussianFit) -> float:
        return sum(fit.probability(lo, hi) for lo, hi in self.intervals)

    def union_upper_tail(self, start: float) -> RejectionRegion:
        """This region together with [start, inf), intervals merged."""
        merged: list[tuple[float, float]] = []
        for lo, hi in sorted(self.intervals + ((start, math.inf),)):
            if merged and lo <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return RejectionRegion(tuple(merged), self.log_ratio_threshold)


def log_ratio_coefficients(null: GaussianFit, alt: GaussianFit) -> tuple[float, float, float]:
    """(a, b, c) with log f_alt(x) - log f_null(x) = a x^2 + b x + c."""
    v0, v1 = null.std ** 2, alt.std ** 2
    a = 1.0 / (2 * v0) - 1.0 / (2 * v1)
    b = alt.mean / v1 - null.mean / v0
    c = null.mean ** 2 / (2 * v0) - alt.mean ** 2 / (2 * v1) + math.log(null.std / alt.std)
    return a, b, c


def _roots(a: float, b: float, c: float) -> tuple[float, float] | None:
    """Real roots (sorted) of a x^2 + b x + c, by the cancellation-free formula; None if complex."""
    disc = b * b - 4 * a * c
    if disc < 0:
        return None
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    r1 = q / a
    r2 = c / q if q != 0 else -r1
    return (min(r1, r2), max(r1, r2))


def region_for_threshold(null: GaussianFit, alt: GaussianFit, k: float) -> RejectionRegion:
    """{x : log f_alt(x) - log f_null(x) >= k} for unequal stds (a != 0)."""
    a, b, c = log_ratio_coefficients(null, alt)
    roots = _roots(a, b, c - k)
    if a < 0:  # maximum: inside the roots, empty if k is above the maximum
        return RejectionRegion(() if roots is None else (roots,), k)
    if roots is None:  # minimum above k: everywhere
        return RejectionRegion(((-math.inf, math.inf),), k)
    return RejectionRegion(((-math.inf, roots[0]), (roots[1], math.inf)), k)


def _one_tail(null: GaussianFit, alt: GaussianFit, alpha: float) -> RejectionRegion:
    # equal stds: the ratio is monotone in x, the region one tail of probability alpha under H0; with
    # equal means too the hypotheses are indistinguishable and the upper tail is as good as any
    if alt.mean >= null.mean:
        return RejectionRegion(((float(norm.isf(alpha, null.mean, null.std)), math.inf),), math.nan)
    return RejectionRegion(((-math.inf, float(norm.ppf(alpha, null.mean, null.std))),), math.nan)


def likelihood_ratio_region(null: GaussianFit, alt: GaussianFit, alpha: float) -> RejectionRegion:
    """The most powerful rejection region of size ``alpha`` for H0 = ``null`` against H1 = ``alt``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if math.isclose(null.std, alt.std, rel_tol=_EQUAL_STD_RTOL):
        return _one_tail(null, alt, alpha)
    a, b, c = log_ratio_coefficients(null, alt)
    vertex = c - b * b / (4 * a)  # the extreme value of the log ratio

    def excess(k: float) -> float:
        return region_for_threshold(null, alt, k).probability(null) - alpha

    # P0 is 1 at the low end of k and 0 at the high end; widen the bracket until it holds the root
    sign = -1.0 if a < 0 else 1.0
    for doubling in range(_MAX_DOUBLINGS):
        far = vertex + sign * 2.0 ** doubling
        if (excess(far) >= 0) == (a < 0):
            break
    else:  # unreachable for finite fits: P0 tends to 1 (a < 0) or 0 (a > 0) as k moves away
        raise ValueError(f"no likelihood-ratio threshold of size {alpha} for {null} vs {alt}")
    lo, hi = (far, vertex) if a < 0 else (vertex, far)
    k = brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12, maxiter=500)
    return region_for_threshold(null, alt, k)


__all__ = ["MIN_STD", "GaussianFit", "RejectionRegion", "likelihood_ratio_region",
           "log_ratio_coefficients", "region_for_threshold"]
