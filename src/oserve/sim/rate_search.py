"""The highest rate a deployment sustains under a P99 latency bound.

A rate is sustained when every request finishes within the run's drain horizon and the P99 end-to-end
latency is at most the bound. Latency grows with load (not strictly, as bursts replay differently at each
scale, so the search assumes it): the search brackets the boundary by doubling or halving the rate scale,
then bisects geometrically until the bracket is within ``rel_tol``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from oserve.common.errors import ConfigError


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

    lo, hi = None, None
    scale = start_scale
    while len(result.probes) < max_probes and (lo is None or hi is None):
        if probe(scale):
            lo = scale
            scale *= 2.0
        else:
            hi = scale
            scale /= 2.0
    while lo is not None and hi is not None and hi / lo > 1 + rel_tol and len(result.probes) < max_probes:
        mid = (lo * hi) ** 0.5
        if probe(mid):
            lo = mid
        else:
            hi = mid
    result.best_scale = lo or 0.0
    return result
