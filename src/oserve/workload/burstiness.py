"""What a latency model needs of a trace beyond mean rates: its bursts and per-type length samples.

**Bursts.** A trace's rate is not stationary: the Azure traces hold 10-second windows with 5-6x the median
arrivals, and most SLO misses happen there. The trace is cut into windows of ``window_s`` (10 s: long
against a replica's queue relaxation, short against a burst); windows are sorted by their prompt-token
load and grouped into regimes by time quantile: the lightest half, then 25%, 15%, 6%, 3% and the heaviest
1% of the windows, and the heaviest window alone (finer towards the bursts, where the misses are).
Each regime has its share of the trace's time and per-type rate
multipliers (the regime's rate of that type over the trace's). A latency model evaluates each regime at
its rates as if stationary and weights the regimes by requests. Replaying the trace at ``s`` times its
rate compresses time, so regimes are formed from windows of ``s * window_s`` trace seconds.
Inside a window, arrivals still clump (the Azure traces: several requests in the same second); the index
of dispersion of 1-second counts around their window's mean (``within_idc``, about 2-3 on azure-mix) is
the arrivals' squared coefficient of variation inside a regime, thinned by a replica's share of them
(``1 + p (IDC - 1)``). ``Burstiness.poisson()`` is one regime at multiplier 1 with Poisson arrivals.

**Length samples** are up to ``max_samples`` (input, output) pairs per request type, drawn evenly over the
type's requests sorted by input length, so that a latency model averages over the type's real length
distribution instead of its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oserve.workload.trace import Trace

WINDOW_S = 10.0
NUM_REGIMES = 6
REGIME_EDGES = (0.0, 0.5, 0.75, 0.9, 0.96, 0.99, 1.0)  # time quantiles of windows sorted by load


@dataclass(frozen=True)
class Regime:
    time_share: float
    multipliers: tuple[float, ...]  # per type: regime rate / trace rate


@dataclass
class Burstiness:
    """Per-second arrivals and prompt tokens per type of a trace (empty: a stationary stream)."""

    counts: np.ndarray | None = None  # (seconds, types) arrivals
    tokens: np.ndarray | None = None  # (seconds,) prompt tokens
    window_s: float = WINDOW_S
    num_regimes: int = NUM_REGIMES
    within_idc: float = 1.0  # index of dispersion of 1-s counts around their 10-s window's mean
    _cache: dict[int, list[Regime]] = field(default_factory=dict, repr=False)

    @staticmethod
    def poisson() -> Burstiness:
        return Burstiness()

    @staticmethod
    def of_trace(trace: Trace, type_id: np.ndarray, num_types: int, window_s: float = WINDOW_S,
                 num_regimes: int = NUM_REGIMES) -> Burstiness:
        t = np.asarray(trace.arrival_s, dtype=float)
        sec = (t - t[0]).astype(np.int64) if len(t) else np.zeros(0, dtype=np.int64)
        n = int(sec.max()) + 1 if len(sec) else 1
        counts = np.zeros((n, num_types))
        np.add.at(counts, (sec, np.asarray(type_id, dtype=np.int64)), 1.0)
        tokens = np.bincount(sec, weights=trace.input_tokens, minlength=n).astype(float)
        return Burstiness(counts, tokens, window_s, num_regimes, _within_idc(counts.sum(axis=1), window_s))

    def within_ca2(self, fraction: float = 1.0) -> float:
        """Squared coefficient of variation of arrivals inside a regime, for a stream thinned to
        ``fraction`` of the trace (``1 + fraction * (IDC - 1)``; 1 for Poisson)."""
        return 1.0 + min(max(fraction, 0.0), 1.0) * (self.within_idc - 1.0)

    def regimes(self, rate_scale: float = 1.0) -> list[Regime]:
        """The load regimes of the trace replayed at ``rate_scale`` (cached per scale)."""
        if self.counts is None:
            return [Regime(1.0, ())]
        key = round(math.log(rate_scale) * 32)
        if key not in self._cache:
            self._cache[key] = self._regimes(rate_scale)
        return self._cache[key]

    def _regimes(self, rate_scale: float) -> list[Regime]:
        assert self.counts is not None and self.tokens is not None  # regimes() checked
        width = max(1, round(self.window_s * rate_scale))
        nwin = len(self.tokens) // width
        if nwin < 2:  # the whole trace fits in one window: no burst to speak of at this speed
            return [Regime(1.0, (1.0,) * self.counts.shape[1])]
        counts = self.counts[:nwin * width].reshape(nwin, width, -1).sum(axis=1)
        tokens = self.tokens[:nwin * width].reshape(nwin, width).sum(axis=1)
        mean_rate = np.maximum(counts.mean(axis=0), 1e-12)  # per window
        order = np.argsort(tokens, kind="stable")
        # time quantiles of the windows sorted by load, finer towards the heaviest (where misses are)
        # ... and the heaviest window always a regime of its own
        edges = np.unique(np.append(np.round(np.asarray(REGIME_EDGES) * nwin).astype(int), nwin - 1))
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            members = order[lo:hi]
            if len(members) == 0:
                continue
            mult = counts[members].mean(axis=0) / mean_rate
            out.append(Regime(len(members) / nwin, tuple(float(x) for x in mult)))
        return out


def _within_idc(per_second: np.ndarray, window_s: float) -> float:
    """Pooled Var/mean of 1-second counts around their window's mean: the clumping a regime's
    stationary model does not see (1 for Poisson arrivals)."""
    w = max(2, int(window_s))
    nwin = len(per_second) // w
    if nwin < 1:
        return 1.0
    c = per_second[:nwin * w].reshape(nwin, w)
    mean = c.mean(axis=1, keepdims=True)
    total = float(mean.sum() * w)
    if total <= 0:
        return 1.0
    return max(float(((c - mean) ** 2).sum() * w / (w - 1)) / total, 0.05)


@dataclass(frozen=True)
class LengthSample:
    """Equal-weight (input, output) token pairs of one request type."""

    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    @property
    def mean_input_tokens(self) -> float:
        return float(np.mean(self.input_tokens))

    @property
    def mean_output_tokens(self) -> float:
        return float(np.mean(self.output_tokens))


def length_samples(trace: Trace, type_id: np.ndarray, num_types: int,
                   max_samples: int = 48) -> list[LengthSample]:
    """Per type: up to ``max_samples`` requests evenly spread over its input-length order."""
    out = []
    for t in range(num_types):
        idx = np.flatnonzero(np.asarray(type_id) == t)
        if len(idx) == 0:
            out.append(LengthSample((1,), (1,)))
            continue
        idx = idx[np.argsort(trace.input_tokens[idx], kind="stable")]
        pick = idx[np.linspace(0, len(idx) - 1, min(max_samples, len(idx))).round().astype(int)]
        out.append(LengthSample(tuple(int(x) for x in trace.input_tokens[pick]),
                                tuple(int(max(x, 1)) for x in trace.output_tokens[pick])))
    return out


__all__ = ["Burstiness", "LengthSample", "Regime", "length_samples"]
