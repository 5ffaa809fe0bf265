"""SLO capacity and predicted goodput from the latency model (``costmodel.latency_model``).

* ``SloWorkload``: what latency planning needs of a trace: per-type length samples, mean rates, SLOs, the
  measured burstiness and the attainment target.
* ``fleet_attainment``: each type's predicted attainment when a fleet of replicas serves ``scale`` times
  the trace's rates, type t's traffic split over replicas by ``fractions[t][r]``: the fraction-weighted
  mean of the replicas' predictions for their co-located mixes.
* ``predicted_goodput_scale``: the highest scale at which every type's predicted attainment reaches the
  target (geometric bisection to ``rel_tol``), i.e. the SLO goodput the model predicts.
* ``slo_capacity_rps``: a type's SLO capacity on one replica: the highest rate of that type alone at which
  it meets the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from oserve.costmodel.latency_model import ReplicaLatencyModel, ReplicaPrediction
from oserve.workload.burstiness import Burstiness, LengthSample
from oserve.workload.slo import Slo

MAX_SCALE = 1024.0


@dataclass(frozen=True)
class SloWorkload:
    samples: tuple[LengthSample, ...]
    rates_rps: tuple[float, ...]
    slos: tuple[Slo, ...]
    burstiness: Burstiness | None
    target: float = 0.9

    @property
    def num_types(self) -> int:
        return len(self.samples)


def fleet_attainment(models: Sequence[ReplicaLatencyModel], fractions: np.ndarray, workload: SloWorkload,
                     scale: float) -> np.ndarray:
    """Per-type predicted attainment at ``scale``; ``fractions`` is (types, replicas), rows sum to 1.

    Replicas with the same model and the same column of fractions are predicted once.
    """
    rates = np.asarray(workload.rates_rps) * scale
    att = np.zeros(workload.num_types)
    seen: dict[tuple[int, tuple[float, ...]], ReplicaPrediction] = {}
    # one model and one share for all: the fleet's attainment is the replica's, so the prediction may
    # stop as soon as a type cannot reach the target
    uniform = len({id(m) for m in models}) == 1 and np.allclose(fractions, fractions[:, :1])
    target = workload.target if uniform else None
    for r, model in enumerate(models):
        col = fractions[:, r]
        if not (col > 0).any():
            continue
        key = (id(model), tuple(np.round(col, 9)))
        pred = seen.get(key)
        if pred is None:
            share = float((rates * col).sum() / max(rates.sum(), 1e-12))  # of the trace's arrivals
            pred = model.predict(list(workload.samples), list(rates * col), list(workload.slos),
                                 workload.burstiness, scale, target, share)
            seen[key] = pred
        att += col * np.array([p.attainment for p in pred.types])
    return att


def meets_target(att: np.ndarray, workload: SloWorkload) -> bool:
    served = np.asarray(workload.rates_rps) > 0
    return bool(np.all(att[served] >= workload.target))


def max_good_scale(is_good: Callable[[float], bool], start: float, rel_tol: float = 0.03,
                   max_probes: int = 30) -> float:
    """The highest scale with ``is_good`` (assumed monotone), bracketing by factors of 4 from ``start``
    then bisecting geometrically to ``rel_tol``; 0 if none down to ``start / 4**6``."""
    lo, hi = 0.0, None
    scale, probes = start, 0
    while probes < max_probes:
        probes += 1
        if is_good(scale):
            lo = scale
            if hi is not None or scale >= MAX_SCALE:
                break
            scale *= 4.0
        else:
            hi = scale
            if lo > 0 or scale < start / 4 ** 6:
                break
            scale /= 4.0
    if lo <= 0 or hi is None:
        return lo
    while hi / lo > 1 + rel_tol and probes < max_probes:
        probes += 1
        mid = (lo * hi) ** 0.5
        if is_good(mid):
            lo = mid
        else:
            hi = mid
    return lo


def predicted_goodput_scale(models: Sequence[ReplicaLatencyModel], fractions: np.ndarray,
                            workload: SloWorkload, start: float = 1.0, rel_tol: float = 0.03) -> float:
    """SLO goodput scale of a fleet as the latency model predicts it."""
    return max_good_scale(
        lambda s: meets_target(fleet_attainment(models, fractions, workload, s), workload),
        start, rel_tol)


def slo_capacity_rps(model: ReplicaLatencyModel, type_index: int, workload: SloWorkload,
                     start_rps: float = 1.0, rel_tol: float = 0.03) -> float:
    """Highest rate of one type alone on one replica at which its predicted attainment meets the target."""
    k = workload.num_types

    def good(rate: float) -> bool:
        rates = [0.0] * k
        rates[type_index] = rate
        # the replica's stream is the type's stream thinned: its bursts are the type's own
        share = workload.rates_rps[type_index] / max(sum(workload.rates_rps), 1e-12)
        pred = model.predict(list(workload.samples), rates, list(workload.slos), workload.burstiness,
                             rate / max(workload.rates_rps[type_index], 1e-12), workload.target, share)
        return pred.types[type_index].attainment >= workload.target

    return max_good_scale(good, start_rps, rel_tol)


__all__ = ["SloWorkload", "fleet_attainment", "max_good_scale", "meets_target", "predicted_goodput_scale",
           "slo_capacity_rps"]
