"""Simulation in the loop: the simulator verifies the goodput planner's shortlist and picks the winner.

The analytical planner (``planner.slo_planner``) shortlists plans by predicted goodput, always including the
best homogeneous-tuned fleet. Each is simulated on a verification trace and its SLO goodput scale
searched (``sim.goodput``): the homogeneous-tuned fleet first, from its predicted scale (divided by how much
busier the verification window is than the trace); every later
plan only above the best scale so far (one probe there, and it is pruned when it misses). The plan with
the highest *simulated* goodput wins (ties: the earlier one, the tuned fleet first), so the result is
never worse than the homogeneous-tuned fleet on that trace. All probes share one step-time cache.

The verification trace (``max_requests`` requests; by default 250 per replica of the largest shortlisted
fleet, at least 1,000) is the whole trace when it has at most that many requests, else the contiguous
window of ``max_requests`` requests centred on the trace's busiest 10 seconds (goodput is decided in the
bursts), re-timed to start at 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.planner.api import make_plan
from oserve.planner.plan import Plan
from oserve.planner.slo_planner import plan_for_slo, score_plan, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import PreparedTrace
from oserve.sim.goodput import plan_goodput
from oserve.workload.slo import SloSpec
from oserve.workload.trace import Trace

MIN_VERIFY_REQUESTS = 1000
REQUESTS_PER_REPLICA = 250  # so that every replica of a large fleet sees a few hundred requests
BUSY_WINDOW_S = 10.0


@dataclass(frozen=True)
class Verification:
    plan: Plan  # the winner, with ``simulated_goodput_scale`` set
    candidates: tuple[Plan, ...]  # every shortlisted plan with its simulated scale (None: pruned)
    requests: int  # requests in the verification trace
    pruned_at: tuple[float | None, ...] = ()  # per candidate: the scale it missed when pruned

    def to_dict(self) -> dict:
        pruned = self.pruned_at or (None,) * len(self.candidates)
        return {"verification_requests": self.requests,
                "shortlist": [{"deployment": p.describe(),
                               "predicted_goodput_scale": p.predicted_goodput_scale,
                               "simulated_goodput_scale": p.simulated_goodput_scale,
                               "pruned_at_scale": x}
                              for p, x in zip(self.candidates, pruned)]}


def verification_trace(prepared: PreparedTrace, max_requests: int) -> PreparedTrace:
    """The requests around the busiest 10 s (all of them when few enough), types kept."""
    trace = prepared.trace
    n = len(trace)
    if n <= max_requests:
        return prepared
    t = trace.arrival_s
    ends = np.searchsorted(t, t + BUSY_WINDOW_S)
    busiest = int(np.argmax(ends - np.arange(n)))
    centre = (busiest + int(ends[busiest])) // 2
    lo = max(0, min(centre - max_requests // 2, n - max_requests))
    sl = slice(lo, lo + max_requests)
    sub = Trace(t[sl] - t[lo], trace.input_tokens[sl], trace.output_tokens[sl],
                f"{trace.name}[verify {max_requests}]", dict(trace.meta))
    return PreparedTrace(sub, prepared.types, prepared.types.stats(sub), prepared.num_clipped)


def verify_shortlist(shortlist: list[Plan], prepared: PreparedTrace, cost: CostModel, config: SimConfig,
                     slo: SloSpec, max_requests: int | None = None,
                     rel_tol: float = 0.03) -> Verification:
    """Simulate the shortlist's goodput; the best simulated one wins. The first plan is the baseline
    (the best homogeneous-tuned fleet), searched in full; each later one must beat the best so far, so
    its search starts at that scale times ``1 + rel_tol`` and stops there (pruned) when it misses."""
    if max_requests is None:
        most = max(len(p.replicas) for p in shortlist)
        max_requests = max(MIN_VERIFY_REQUESTS, REQUESTS_PER_REPLICA * most)
    vt = verification_trace(prepared, max_requests)
    timers: dict = {}  # step times shared by every probe of every plan (same model, same cost model)
    # the verification window is busier than the trace on average: scales are relative to the full
    # trace's rates either way (the window keeps the trace's own timing), and a predicted scale (for the
    # whole trace) starts the search that much lower, sparing probes deep in overload
    busier = max(vt.trace.mean_rate_rps / max(prepared.trace.mean_rate_rps, 1e-12), 1.0)
    checked: list[Plan] = []
    pruned: list[float | None] = []
    best = 0.0
    for plan in shortlist:
        start = max((plan.predicted_goodput_scale or 1.0) / busier, 1e-3)
        floor = best * (1 + rel_tol) if checked else 0.0
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=start, rel_tol=rel_tol, floor=floor,
                           timers=timers)
        checked.append(replace(plan, simulated_goodput_scale=None if res.pruned else res.scale))
        pruned.append(floor if res.pruned else None)
        best = max(best, res.scale)
    win = max(range(len(checked)), key=lambda i: (checked[i].simulated_goodput_scale or 0.0, -i))
    return Verification(checked[win], tuple(checked), len(vt.trace), tuple(pruned))


def plan_with_slo(cluster: ClusterSpec, cost: CostModel, prepared: PreparedTrace, planner: str,
                  slo: SloSpec, objective: str, config: SimConfig, allow_pp: bool = True,
                  verify_requests: int | None = None, weight_formats: tuple[str, ...] = ("bf16",),
                  kv_formats: tuple[str, ...] = ("bf16",),
                  disaggregation: bool = False) -> tuple[Plan, Verification | None]:
    """A planner's plan under an SLO: goodput planners (``oserve``, ``homogeneous-tuned``) plan with the
    latency model and, for ``oserve`` with ``verify_requests > 0``, have the simulator pick from the
    shortlist (``verify_requests`` as ``max_requests`` of ``verify_shortlist``); the other planners plan as
    usual and get their predicted goodput filled in."""
    t0 = time.perf_counter()
    workload = slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
    if planner in ("oserve", "homogeneous-tuned") and objective != "throughput":
        best, shortlist = plan_for_slo(cluster, cost, prepared.stats, workload, planner, objective, allow_pp,
                                       weight_formats, kv_formats, disaggregation)
        if planner != "oserve" or verify_requests == 0 or objective != "goodput":
            return replace(best, planner_seconds=time.perf_counter() - t0), None
        ver = verify_shortlist(shortlist, prepared, cost, config, slo, verify_requests)
        return replace(ver.plan, planner_seconds=time.perf_counter() - t0), ver
    plan = make_plan(cluster, cost.model, prepared.stats, planner, cost, allow_pp=allow_pp,
                     weight_formats=weight_formats, kv_formats=kv_formats)
    return score_plan(plan, cost, prepared.stats, workload, cluster), None


__all__ = ["MIN_VERIFY_REQUESTS", "REQUESTS_PER_REPLICA", "Verification", "plan_with_slo",
           "verification_trace", "verify_shortlist"]
