"""Simulation in the loop: the simulator verifies the goodput planner's shortlist and picks the winner.

The analytical planner (``planner.slo_planner``) shortlists plans by predicted goodput, always including
the best homogeneous-tuned fleet. Each is simulated on a verification trace and its SLO goodput scale
searched (``sim.goodput``), starting at its predicted scale; the plan with the highest *simulated*
goodput wins (ties: the earlier, i.e. better predicted, one), so the result is never worse than the
homogeneous-tuned fleet on that trace. The verification trace is the whole trace when it has at most
``max_requests`` requests, else the contiguous window of ``max_requests`` requests centred on the
trace's busiest 10 seconds (goodput is decided in the bursts), re-timed to start at 0.
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

DEFAULT_VERIFY_REQUESTS = 2000
BUSY_WINDOW_S = 10.0


@dataclass(frozen=True)
class Verification:
    plan: Plan  # the winner, with ``simulated_goodput_scale`` set
    candidates: tuple[Plan, ...]  # every shortlisted plan with its simulated scale
    requests: int  # requests in the verification trace

    def to_dict(self) -> dict:
        return {"verification_requests": self.requests,
                "shortlist": [{"deployment": p.describe(),
                               "predicted_goodput_scale": p.predicted_goodput_scale,
                               "simulated_goodput_scale": p.simulated_goodput_scale}
                              for p in self.candidates]}


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
                     slo: SloSpec, max_requests: int = DEFAULT_VERIFY_REQUESTS) -> Verification:
    """Simulate every shortlisted plan's goodput; the best simulated one wins."""
    vt = verification_trace(prepared, max_requests)
    # the verification window is busier than the trace on average: scales are relative to the full
    # trace's rates either way (the window keeps the trace's own timing)
    checked = []
    for plan in shortlist:
        start = plan.predicted_goodput_scale or 1.0
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=max(start, 1e-3))
        checked.append(replace(plan, simulated_goodput_scale=res.scale))
    best = max(range(len(checked)), key=lambda i: (checked[i].simulated_goodput_scale, -i))
    return Verification(checked[best], tuple(checked), len(vt.trace))


def plan_with_slo(cluster: ClusterSpec, cost: CostModel, prepared: PreparedTrace, planner: str,
                  slo: SloSpec, objective: str, config: SimConfig, allow_pp: bool = True,
                  verify_requests: int = DEFAULT_VERIFY_REQUESTS, weight_formats: tuple[str, ...] = ("bf16",),
                  kv_formats: tuple[str, ...] = ("bf16",),
                  disaggregation: bool = False) -> tuple[Plan, Verification | None]:
    """A planner's plan under an SLO: goodput planners (``oserve``, ``homogeneous-tuned``) plan with the
    latency model and, for ``oserve`` with ``verify_requests > 0``, have the simulator pick from the
    shortlist; the other planners plan as usual and get their predicted goodput filled in."""
    t0 = time.perf_counter()
    workload = slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
    if planner in ("oserve", "homogeneous-tuned") and objective != "throughput":
        best, shortlist = plan_for_slo(cluster, cost, prepared.stats, workload, planner, objective, allow_pp,
                                       weight_formats, kv_formats, disaggregation)
        if planner != "oserve" or verify_requests <= 0 or objective != "goodput":
            return replace(best, planner_seconds=time.perf_counter() - t0), None
        ver = verify_shortlist(shortlist, prepared, cost, config, slo, verify_requests)
        return replace(ver.plan, planner_seconds=time.perf_counter() - t0), ver
    plan = make_plan(cluster, cost.model, prepared.stats, planner, cost, allow_pp=allow_pp,
                     weight_formats=weight_formats, kv_formats=kv_formats)
    return score_plan(plan, cost, prepared.stats, workload, cluster), None


__all__ = ["DEFAULT_VERIFY_REQUESTS", "Verification", "plan_with_slo", "verification_trace",
           "verify_shortlist"]
