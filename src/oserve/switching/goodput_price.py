"""Pricing a deployment in SLO goodput for the switching policy: forecast requests per second that meet
their SLO.

For a forecast of per-type rates, a set of placed replicas and its dispatch, the latency model
(``costmodel.slo_capacity.fleet_attainment``) predicts each type's attainment a_t; the deployment's good
rate is ``sum_t rate_t x a_t``. A forecast is not the rate that arrives: the good rate is averaged over
equally likely factors of the forecast (``forecast_factors``: quantiles of a log-normal whose spread is
the forecaster's error), so a deployment that just meets the target at the forecast and misses it in
a busier interval prices below one with headroom, as the requests of that interval will see it. The
SLO workload (per-type length samples, SLOs, burstiness, attainment
target) is the trace's, its rates replaced by the forecast. Without one (``default_slo_workload``) each
type is one request of its mean lengths under the ``loose`` preset.

The dispatch of a replica set is the dispatch LP (``planner.problem``) on per-type SLO capacities
(``slo_capacity_rps``: the highest rate of a type alone that a replica serves at the target), balanced,
as the SLO planner's search dispatches. During a switch only the replicas that stay serve, with the
target's dispatch restricted to them (what the simulator and the router do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from scipy.special import ndtri

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.slo_capacity import (
    SloWorkload,
    fleet_attainment,
    meets_target,
    predicted_goodput_scale,
    slo_capacity_rps,
)
from oserve.planner.plan import Replica
from oserve.planner.problem import PlanningProblem
from oserve.workload.burstiness import LengthSample
from oserve.workload.request_types import TypeStats
from oserve.workload.slo import SLO_PRESETS

LatencyModels = dict[ReplicaConfig, ReplicaLatencyModel]


NUM_DEFAULT_SAMPLES = 8
NUM_ERROR_FACTORS = 3  # points of the forecast-error distribution a price averages over
_Z90 = 1.2815515655446004  # standard normal 90th percentile


def _lognormal_quantiles(mean: float, p90: float, n: int) -> tuple[int, ...]:
    """``n`` equal-weight quantiles of the log-normal with this mean and 90th percentile (all the mean
    when the percentile is not above it)."""
    mean = max(mean, 1.0)
    # ln p90 - ln mean = z90 s - s^2 / 2: the smaller root (the larger one is a heavier-tailed twin)
    d = math.log(max(p90, mean)) - math.log(mean)
    disc = _Z90 * _Z90 - 2.0 * d
    sigma = _Z90 - math.sqrt(disc) if disc > 0 else _Z90
    mu = math.log(mean) - sigma * sigma / 2.0
    qs = ndtri((np.arange(n) + 0.5) / n)
    return tuple(int(max(1, round(x))) for x in np.exp(mu + sigma * qs))


def default_slo_workload(types: Sequence[TypeStats]) -> SloWorkload:
    """Without the trace's samples: each type's lengths as log-normal quantiles fitted to its mean and 90th
    percentile, under the ``loose`` SLO preset, Poisson arrivals."""
    samples = tuple(LengthSample(_lognormal_quantiles(t.mean_input_tokens, t.p90_input_tokens,
                                                      NUM_DEFAULT_SAMPLES),
                                 _lognormal_quantiles(t.mean_output_tokens, t.p90_output_tokens,
                                                      NUM_DEFAULT_SAMPLES))
                    for t in types)
    return SloWorkload(samples, tuple(float(t.rate_rps) for t in types),
                       tuple(SLO_PRESETS["loose"] for _ in types), None)


class GoodputPricer:
    """Good rates and SLO dispatch of replica sets for one forecast; latency models shared in ``models``
    (keyed by configuration: their memo tables depend only on the length samples and the SLOs)."""

    def __init__(self, cluster: ClusterSpec, cost: CostModel, workload: SloWorkload,
                 types: Sequence[TypeStats], models: LatencyModels,
                 factors: Sequence[float] = (1.0,)) -> None:
        if not factors or min(factors) <= 0:
            raise ConfigError(f"goodput pricer: forecast-error factors must be positive, got {factors}")
        self.cluster, self.cost, self.types = cluster, cost, list(types)
        self.workload = workload
        self.models = models
        self.factors = tuple(float(f) for f in factors)
        self._capacity: dict[ReplicaConfig, list[float]] = {}

    def model(self, cfg: ReplicaConfig) -> ReplicaLatencyModel:
        if cfg not in self.models:
            # step times depend on the timing split (with PP the chunk budget too): share only within it
            shared = next((m.step_cache for c, m in self.models.items() if c.timing == cfg.timing), {})
            self.models[cfg] = ReplicaLatencyModel(self.cost, cfg, shared)
        return self.models[cfg]

    def attainment(self, replicas: Sequence[Replica], fractions: np.ndarray, scale: float = 1.0
                   ) -> np.ndarray:
        """Per-type predicted attainment at ``scale`` times the forecast (zeros for no replica)."""
        if not len(replicas):
            return np.zeros(self.workload.num_types)
        return fleet_attainment([self.model(r.config) for r in replicas], np.asarray(fractions, dtype=float),
                                self.workload, scale)

    def good_rps(self, replicas: Sequence[Replica], fractions: np.ndarray) -> float:
        """Forecast requests/s meeting their SLO on ``replicas`` with dispatch ``fractions`` (types x
        replicas), the mean over the pricer's forecast-error ``factors`` (the rates each factor times the
        forecast, equally likely); 0 for no replica.

        Beyond its SLO capacity the model predicts almost no request in time (the queue grows), so every
        overloaded deployment would price at ~0 and none would be worth switching to. An overloaded
        deployment is credited instead with what it carries at the target: its predicted goodput scale s
        (relative to the forecast) over the factor, at most 1, times the target times the offered total,
        the good rate it would have if it served that share and the rest missed."""
        if not len(replicas):
            return 0.0
        total = float(sum(self.workload.rates_rps))
        scale: float | None = None  # the fleet's predicted goodput scale, searched once when needed
        good = []
        for f in self.factors:
            g = f * float(np.dot(self.workload.rates_rps, self.attainment(replicas, fractions, f)))
            if g < self.workload.target * f * total:
                if scale is None:
                    models = [self.model(r.config) for r in replicas]
                    scale = predicted_goodput_scale(models, np.asarray(fractions, dtype=float),
                                                    self.workload, start=0.5, rel_tol=0.05)
                g = max(g, min(1.0, scale / f) * self.workload.target * f * total)
            good.append(g)
        return float(np.mean(good))

    def meets(self, replicas: Sequence[Replica], fractions: np.ndarray, scale: float = 1.0) -> bool:
        """Every type with forecast traffic reaches the attainment target at ``scale`` x the forecast."""
        return meets_target(self.attainment(replicas, fractions, scale), self.workload)

    def capacity_rps(self, cfg: ReplicaConfig) -> list[float]:
        """Per-type SLO capacity of one replica of ``cfg`` (1 for a type without forecast traffic)."""
        if cfg not in self._capacity:
            rates = self.workload.rates_rps
            start = max(rates) or 1.0
            self._capacity[cfg] = [slo_capacity_rps(self.model(cfg), t, self.workload, start_rps=start)
                                   if rates[t] > 0 else 1.0 for t in range(self.workload.num_types)]
        return self._capacity[cfg]

    def dispatch(self, replicas: Sequence[Replica]) -> np.ndarray:
        """The balanced dispatch LP on SLO capacities, (types, replicas), rows summing to 1."""
        configs = sorted({r.config for r in replicas})
        problem = PlanningProblem(self.cluster, self.cost, self.types, config_list=configs,
                                  capacity_matrix=np.array([self.capacity_rps(c) for c in configs]))
        counts = tuple(sum(1 for r in replicas if r.config == c) for c in configs)
        sol = problem.solve(counts, balance=True)
        k, n = len(self.types), len(replicas)
        if sol is None:  # some type no replica can serve at the target: spread everything evenly
            return np.full((k, n), 1.0 / n)
        group = {c: j for j, c in enumerate(configs)}
        out = np.array([[sol.flow[t, group[r.config]] / counts[group[r.config]] for r in replicas]
                        for t in range(k)])
        return restrict(out, range(n))


def forecast_factors(error: float, num: int = NUM_ERROR_FACTORS) -> tuple[float, ...]:
    """``num`` equally likely factors of the realised rate over the forecast: the quantile midpoints of a
    log-normal whose coefficient of variation is ``error`` (the forecaster's relative RMS error), scaled
    to mean 1 (the forecast is the expected rate); ``(1.0,)`` for no error."""
    if error < 0:
        raise ConfigError(f"forecast error must be >= 0, got {error}")
    if error == 0:
        return (1.0,)
    sigma = math.sqrt(math.log1p(error * error))
    points = np.exp(sigma * ndtri((np.arange(num) + 0.5) / num))
    return tuple(float(x) for x in points / points.mean())


def restrict(fractions: np.ndarray, columns: Sequence[int] | range) -> np.ndarray:
    """``fractions`` (types x replicas) restricted to ``columns`` and renormalised per type; a type with
    nothing on them is spread evenly over them."""
    sub = np.asarray(fractions, dtype=float)[:, list(columns)]
    totals = sub.sum(axis=1, keepdims=True)
    even = np.full_like(sub, 1.0 / max(sub.shape[1], 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, sub / np.where(totals > 0, totals, 1.0), even)


def forecast_workload(base: SloWorkload, types: Sequence[TypeStats]) -> SloWorkload:
    return replace(base, rates_rps=tuple(float(t.rate_rps) for t in types))


__all__ = ["GoodputPricer", "LatencyModels", "default_slo_workload", "forecast_factors", "forecast_workload",
           "restrict"]
