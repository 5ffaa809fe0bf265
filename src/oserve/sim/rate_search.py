"""The highest rate scale that passes a test: the one search behind the P99 and the SLO goodput searches.

``search_scale`` brackets the boundary between good and bad scales by doubling or halving from a start
scale (clamped to ``[min_scale, max_scale]`` when given), then bisects geometrically until the bracket is
within ``rel_tol``, with at most ``max_probes`` calls of the predicate. It assumes that goodness falls
with load (not strictly true: bursts replay differently at each scale).

``search_max_scale`` uses it for the highest rate a deployment sustains under a P99 latency bound: a rate
is sustained when every request finishes within the run's drain horizon and the P99 end-to-end latency
is at most the bound. ``sim.goodput`` uses it for the SLO goodput scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from oserve.common.errors import ConfigError


@dataclass(frozen=True)
class Bracket:
    """The search's end: the highest good and the lowest bad scale probed (None: none was)."""

    lo: float | None
    hi: float | None
    num_probes: int


def search_scale(is_good: Callable[[float], bool], start_scale: float, rel_tol: float, max_probes: int,
                 min_scale: float = 0.0, max_scale: float = math.inf, lo: float | None = None) -> Bracket:
    """Bracket, then bisect the boundary of ``is_good`` (see the module docstring); ``lo``: a scale the
    caller already knows is good (the bracket then only looks for a bad one above ``start_scale``)."""
    hi: float | None = None
    n = 0
    scale = start_scale
    while n < max_probes and (lo is None or hi is None):
        n += 1
        if is_good(scale):
            lo = scale
            if scale >= max_scale:
                break
            scale = min(scale * 2.0, max_scale)
        else:
            hi = scale
            if scale <= min_scale:
                break
            scale = max(scale / 2.0, min_scale)
    while lo is not None and hi is not None and hi / lo > 1 + rel_tol and n < max_probes:
        mid = (lo * hi) ** 0.5
        n += 1
        if is_good(mid):
            lo = mid
        else:
            hi = mid
    return Bracket(lo, hi, n)


@dataclass
class RateSearchResult:
    best_scale: float  # highest scale found that meets the bound (0 if none)
    bound_s: float
    probes: list[tuple[float, float | None, bool]] = field(default_factory=list)  # (scale, p99, ok)


def meets_bound(summary: dict, bound_s: float) -> bool:
    p99 = summary.get("p99_e2e_s")
    return summary.get("dropped", 0) == 0 and p99 is not None and p99 <= bound_s


def search_max_scale(evaluate: Callable[[float], dict], bound_s: float, start_scale: float = 1.0,
                     rel_tol: float = 0.05, max_probes: int = 14) -> RateSearchResult:
    """``evaluate(scale)`` simulates at ``scale`` times the trace's rate and returns its summary."""
    if bound_s <= 0 or start_scale <= 0 or rel_tol <= 0:
        raise ConfigError("rate search needs a positive bound, start scale and tolerance")
    result = RateSearchResult(0.0, bound_s)

    def probe(scale: float) -> bool:
        summary = evaluate(scale)
        ok = meets_bound(summary, bound_s)
        result.probes.append((scale, summary.get("p99_e2e_s"), ok))
        return ok

    result.best_scale = search_scale(probe, start_scale, rel_tol, max_probes).lo or 0.0
    return result
