"""Request types: k-means clusters of (log input, log output) length, and the online classifier.

Offline, requests are clustered on their true lengths (as in OServe). Online, a request's output length is
unknown when it arrives, so the router types it from its prompt length alone: the online classifier
splits log(prompt length) into quantile bins and gives each bin the type that most requests in it belong
to (the Bayes rule for that binning). The planner plans on the statistics of the types *as the router will
assign them*, so that what it plans for is what each replica receives.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import overload

import numpy as np

from oserve.common.errors import ConfigError
from oserve.workload import type_cache
from oserve.workload.trace import Trace

NUM_ONLINE_BINS = 64


@dataclass(frozen=True)
class TypeStats:
    """What the cost model needs to know of one request type."""

    name: str
    mean_input_tokens: float
    mean_output_tokens: float
    p90_input_tokens: float
    p90_output_tokens: float
    count: int
    rate_rps: float


@dataclass(frozen=True)
class OnlineClassifier:
    """Types a request from its prompt length: bin edges in log(1+tokens) and the type of each bin."""

    log_edges: tuple[float, ...]
    bin_type: tuple[int, ...]

    def classify(self, input_tokens: int | np.ndarray) -> np.ndarray | int:
        if isinstance(input_tokens, (int, np.integer)):  # the router's case: one prompt, ~1 us
            b = bisect.bisect_right(self.log_edges, math.log1p(input_tokens))
            return self.bin_type[min(b, len(self.bin_type) - 1)]
        logs = np.log1p(np.asarray(input_tokens, dtype=np.float64))
        bins = np.searchsorted(np.asarray(self.log_edges), logs, side="right")
        out = np.asarray(self.bin_type)[np.clip(bins, 0, len(self.bin_type) - 1)]
        return int(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class RequestTypes:
    """Fitted request types: centroids in (log1p input, log1p output) space, ordered by size."""

    centroids_log: tuple[tuple[float, float], ...]
    online: OnlineClassifier

    @property
    def k(self) -> int:
        return len(self.centroids_log)

    def names(self) -> list[str]:
        names = []
        for i, (li, lo) in enumerate(self.centroids_log):
            names.append(f"T{i}(in~{np.expm1(li):.0f},out~{np.expm1(lo):.0f})")
        return names

    def assign(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """The offline type (nearest centroid) of requests whose lengths are both known."""
        points = _log_points(input_tokens, output_tokens)
        cents = np.asarray(self.centroids_log)
        dist: np.ndarray = ((points[:, None, :] - cents[None, :, :]) ** 2).sum(axis=2)
        labels: np.ndarray = dist.argmin(axis=1)
        return labels

    @overload
    def classify_online(self, input_tokens: int) -> int: ...

    @overload
    def classify_online(self, input_tokens: np.ndarray) -> np.ndarray: ...

    def classify_online(self, input_tokens: int | np.ndarray) -> np.ndarray | int:
        """The online type from the prompt length alone: an int for an int, an array for an array."""
        if isinstance(input_tokens, (int, np.integer)):
            return int(self.online.classify(input_tokens))
        return np.asarray(self.online.classify(np.asarray(input_tokens)))

    def stats(self, trace: Trace, labels: np.ndarray | None = None) -> list[TypeStats]:
        """Per-type statistics of a trace, grouped by online type unless labels are given."""
        if labels is None:
            labels = self.classify_online(trace.input_tokens)
        duration = max(trace.duration_s, 1e-9)
        result = []
        for t, name in enumerate(self.names()):
            mask = labels == t
            n = int(mask.sum())
            if n == 0:
                li, lo = self.centroids_log[t]
                mi, mo = float(np.expm1(li)), float(np.expm1(lo))
                result.append(TypeStats(name, mi, mo, mi, mo, 0, 0.0))
                continue
            ins, outs = trace.input_tokens[mask], trace.output_tokens[mask]
            result.append(TypeStats(
                name, float(ins.mean()), float(outs.mean()),
                float(np.percentile(ins, 90)), float(np.percentile(outs, 90)), n, n / duration))
        return result

    def online_mistype_rate(self, trace: Trace) -> float:
        """Fraction of requests whose online type differs from their offline (true-length) type."""
        offline = self.assign(trace.input_tokens, trace.output_tokens)
        online = self.classify_online(trace.input_tokens)
        return float((offline != online).mean())


def _log_points(input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    return np.column_stack([np.log1p(np.asarray(input_tokens, dtype=np.float64)),
                            np.log1p(np.asarray(output_tokens, dtype=np.float64))])


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 100) -> np.ndarray:
    """Lloyd's algorithm with k-means++ seeding; deterministic for a given generator."""
    centers = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None, :] - np.asarray(centers)[None]) ** 2).sum(axis=2), axis=1)
        total = d2.sum()
        probs = d2 / total if total > 0 else np.full(len(points), 1 / len(points))
        centers.append(points[rng.choice(len(points), p=probs)])
    cents = np.asarray(centers)
    for _ in range(iters):
        labels = ((points[:, None, :] - cents[None]) ** 2).sum(axis=2).argmin(axis=1)
        new = np.array([points[labels == j].mean(axis=0) if np.any(labels == j) else cents[j]
                        for j in range(k)])
        if np.allclose(new, cents):
            break
        cents = new
    return cents


def _fit_online(log_input: np.ndarray, labels: np.ndarray, k: int) -> OnlineClassifier:
    edges = np.unique(np.quantile(log_input, np.linspace(0, 1, NUM_ONLINE_BINS + 1)[1:-1]))
    bins = np.searchsorted(edges, log_input, side="right")
    bin_type = []
    for b in range(len(edges) + 1):
        in_bin = labels[bins == b]
        if len(in_bin):
            bin_type.append(int(np.bincount(in_bin, minlength=k).argmax()))
        else:  # empty bin: inherit the neighbour's type (the first bin falls back to type 0)
            bin_type.append(bin_type[-1] if bin_type else 0)
    return OnlineClassifier(tuple(float(e) for e in edges), tuple(bin_type))


def fit_request_types(trace: Trace, k: int = 4, seed: int = 0, max_points: int = 20000,
                      cache: bool = True) -> RequestTypes:
    """Cluster a trace's requests into k types (k-means on log lengths, best of 4 restarts).

    The result is a pure function of the request lengths, k, seed and max_points, and is kept in the
    user's cache (``type_cache.py``; ``cache=False`` or ``OSERVE_CACHE_DIR=off`` skips it), so commands
    re-run on the same trace skip the clustering.
    """
    if k < 1:
        raise ConfigError(f"number of request types must be >= 1, got {k}")
    if len(trace) < k:
        raise ConfigError(f"trace '{trace.name}' has {len(trace)} requests, fewer than k={k} types")
    key = (type_cache.cache_key(trace.input_tokens, trace.output_tokens, k, seed, max_points)
           if cache else None)
    cached = type_cache.load(key, k) if key else None
    if cached is not None:
        centroids, log_edges, bin_type = cached
        return RequestTypes(centroids, OnlineClassifier(log_edges, bin_type))
    fitted = _fit(trace, k, seed, max_points)
    if key:
        type_cache.store(key, k, fitted.centroids_log, fitted.online.log_edges, fitted.online.bin_type)
    return fitted


def _fit(trace: Trace, k: int, seed: int, max_points: int) -> RequestTypes:
    rng = np.random.default_rng(seed)
    points = _log_points(trace.input_tokens, trace.output_tokens)
    sample = points if len(points) <= max_points else points[rng.choice(len(points), max_points,
                                                                         replace=False)]
    restarts = [_kmeans(sample, k, rng) for _ in range(4)]  # in turn: each draws from the generator
    inertia = [((sample[:, None, :] - c[None]) ** 2).sum(axis=2).min(axis=1).sum() for c in restarts]
    best = restarts[int(np.argmin(inertia))]  # the first of equal minima, as before
    # Order types by expected work (input + output tokens), so T0 is the lightest.
    order = np.argsort(np.expm1(best).sum(axis=1))
    cents = best[order]
    labels = ((points[:, None, :] - cents[None]) ** 2).sum(axis=2).argmin(axis=1)
    online = _fit_online(points[:, 0], labels, k)
    return RequestTypes(tuple((float(a), float(b)) for a, b in cents), online)
