"""Simulation in the loop: the simulator verifies the goodput planner's shortlist and picks the winner.

The analytical planner (``planner.slo_planner``) shortlists plans by predicted goodput, always including the
best homogeneous-tuned fleet. Each is simulated on a verification trace and its SLO goodput scale
searched (``sim.goodput``): the homogeneous-tuned fleet first, from its predicted scale (divided by how much
busier the verification window is than the trace); every later
plan only above the best scale so far (one probe there, and it is pruned when it misses). The plan with
the highest *simulated* goodput wins (ties: the earlier one, the tuned fleet first, then the other
colocated plans, then the disaggregated ones), so the result is never worse than the homogeneous-tuned
fleet or the best colocated plan on that trace. All probes share one step-time cache.

The verification trace (``max_requests`` requests; by default 250 per replica of the largest shortlisted
fleet, at least 1,000) is the whole trace when it has at most that many requests, else the contiguous
window of ``max_requests`` requests centred on the trace's busiest 10 seconds (goodput is decided in the
bursts), re-timed to start at 0.

**Confirmation.** Picking the best of several plans on one sample of the trace favours whichever the
sample flatters (the winner's curse), and only a winner other than the tuned fleet can break the
never-worse guarantee. The sample's resolution is coarse: goodput is the scale at which a type's
attainment crosses the target, each type's attainment is a share of a few hundred requests (binomial
noise ~ 1/sqrt(n)), and near a fleet's capacity its queue builds over more replay time than a
1,000-request window spans at a high scale; a shortlisted plan passes the verification by one probe at
the tuned fleet's scale times ``1 + rel_tol``, inside that noise. So when the winner is not the tuned
fleet, the decision is re-made on a window ``CONFIRM_FACTOR`` times larger (the whole trace when it is
smaller; 1/sqrt(2) of the binomial noise, and a window twice as long in replay time), by a paired search
(``paired_decision``): the winner stands only if it meets the target where the tuned fleet misses, at
least ``1 + rel_tol`` above the tuned fleet's passing scale; otherwise the tuned fleet wins. The cost (a
few probes on the larger window, each stopped once it must fail: ``sim.early_stop``) is paid only in
that case (docs/planner.md: it breaks the 5 s budget at 16 GPUs on a close call).

With disaggregated plans in the shortlist (``decide``) the colocated decision is made first, as above,
among the colocated plans; a disaggregated winner then has to pass the same paired search against that
colocated choice (``group_confirmation``), or the colocated choice stays. So the plan is never worse
than the best colocated plan of the shortlist by more than the search's resolution on the larger window
either (a group that the short window flatters, e.g. a decode pool filling over minutes, is caught
there; docs/evaluation-disaggregation.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
CONFIRM_FACTOR = 2  # the confirmation window's requests over the verification window's
CONFIRM_STEP = 1.25  # the confirmation's bracket steps (it starts near the baseline's goodput)
CONFIRM_MAX_PROBES = 16  # of the baseline on the larger window
REQUESTS_PER_REPLICA = 250  # so that every replica of a large fleet sees a few hundred requests
BUSY_WINDOW_S = 10.0


@dataclass(frozen=True)
class Verification:
    plan: Plan  # the winner, with ``simulated_goodput_scale`` set
    candidates: tuple[Plan, ...]  # every shortlisted plan with its simulated scale (None: pruned)
    requests: int  # requests in the verification trace
    pruned_at: tuple[float | None, ...] = ()  # per candidate: the scale it missed when pruned
    confirmation: Confirmation | None = None  # when the best colocated plan was not the tuned fleet
    group_confirmation: Confirmation | None = None  # when the winner was disaggregated

    def to_dict(self) -> dict:
        pruned = self.pruned_at or (None,) * len(self.candidates)
        return {"verification_requests": self.requests,
                "confirmation": self.confirmation.to_dict() if self.confirmation else None,
                "group_confirmation": (self.group_confirmation.to_dict() if self.group_confirmation
                                       else None),
                "shortlist": [{"deployment": p.describe(),
                               "predicted_goodput_scale": p.predicted_goodput_scale,
                               "simulated_goodput_scale": p.simulated_goodput_scale,
                               "pruned_at_scale": x}
                              for p, x in zip(self.candidates, pruned)]}


@dataclass(frozen=True)
class Confirmation:
    """A decision of the verification re-made on a larger window: the challenger against the baseline
    (the best colocated plan against the tuned fleet, or a disaggregated winner against the colocated
    choice)."""

    requests: int
    challenger: str  # the verification's winner (of the colocated plans, or of all)
    baseline_scale: float  # the highest scale at which the baseline met the target there
    probed_scale: float  # the last scale the challenger was probed at (where the baseline misses)
    confirmed: bool
    probes: int = 0  # simulations on the larger window
    baseline: str = ""  # the plan the challenger had to beat

    def to_dict(self) -> dict:
        return {"requests": self.requests, "challenger": self.challenger, "baseline": self.baseline,
                "baseline_scale": self.baseline_scale, "probed_scale": self.probed_scale,
                "confirmed": self.confirmed, "probes": self.probes}


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
                     rel_tol: float = 0.03, early_stop: bool = True) -> Verification:
    """Simulate the shortlist's goodput; the best simulated one wins. The first plan is the baseline
    (the best homogeneous-tuned fleet), searched in full; each later one must beat the best so far, so
    its search starts at that scale times ``1 + rel_tol`` and stops there (pruned) when it misses.
    ``early_stop`` as in ``plan_goodput`` (failing probes stop once they must fail; same decisions)."""
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
    for plan in colocated_first(shortlist):
        start = max((plan.predicted_goodput_scale or 1.0) / busier, 1e-3)
        floor = best * (1 + rel_tol) if checked else 0.0
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=start, rel_tol=rel_tol, floor=floor,
                           timers=timers, early_stop=early_stop)
        checked.append(replace(plan, simulated_goodput_scale=None if res.pruned else res.scale))
        pruned.append(floor if res.pruned else None)
        best = max(best, res.scale)
    def recheck(baseline: Plan, challenger: Plan) -> Confirmation | None:
        return confirm(baseline, challenger, prepared, vt, cost, config, slo, CONFIRM_FACTOR * max_requests,
                       rel_tol, timers, early_stop)

    win, confirmation, group_confirmation = decide(checked, recheck)
    return Verification(checked[win], tuple(checked), len(vt.trace), tuple(pruned), confirmation,
                        group_confirmation)


def colocated_first(shortlist: list[Plan]) -> list[Plan]:
    """The tuned fleet, the other colocated plans, then the disaggregated ones (each part in its order):
    a plan is pruned against the best before it, so the best colocated plan's scale on the window is known
    whatever a group reaches, and a tie goes to the colocated plan."""
    return [shortlist[0], *sorted(shortlist[1:], key=lambda p: p.is_disaggregated)]


def decide(checked: list[Plan], recheck: Callable[[Plan, Plan], Confirmation | None]
           ) -> tuple[int, Confirmation | None, Confirmation | None]:
    """(the winner's index, the colocated decision's re-check, the group decision's re-check) among the
    verified plans (``checked[0]`` the tuned fleet; simulated scale None: pruned). Two decisions in
    series, each re-made by ``recheck`` (baseline, challenger) on the larger window (None: no larger
    window; the window's decision stands): the best colocated plan replaces the tuned fleet only when
    confirmed; a disaggregated winner replaces that colocated choice only when confirmed against it, so
    the plan is never worse than the best colocated plan by more than the search's resolution there."""
    def best(ids: list[int]) -> int:
        return max(ids, key=lambda i: (checked[i].simulated_goodput_scale or 0.0, -i))

    win = best(list(range(len(checked))))
    col = best([i for i, p in enumerate(checked) if not p.is_disaggregated])
    confirmation = group_confirmation = None
    if col != 0:
        confirmation = recheck(checked[0], checked[col])
        if confirmation is not None and not confirmation.confirmed:
            col = 0
    if checked[win].is_disaggregated:
        group_confirmation = recheck(checked[col], checked[win])
        if group_confirmation is None or group_confirmation.confirmed:
            return win, confirmation, group_confirmation
    return col, confirmation, group_confirmation


def confirm(baseline: Plan, challenger: Plan, prepared: PreparedTrace, vt: PreparedTrace, cost: CostModel,
            config: SimConfig, slo: SloSpec, max_requests: int, rel_tol: float,
            timers: dict, early_stop: bool = True) -> Confirmation | None:
    """Re-make the verification's decision on the larger window of ``max_requests`` requests (None: the
    verification window was already the whole trace), by ``paired_decision``: the verification's rule
    (meet the target at the baseline's scale times ``1 + rel_tol``) on the larger window, at a few
    probes when the challenger is clearly better."""
    ct = verification_trace(prepared, max_requests)
    if len(ct.trace) <= len(vt.trace):
        return None
    probes = 0

    def meets(plan: Plan, scale: float) -> bool:
        nonlocal probes
        probes += 1
        return not plan_goodput(plan, ct, cost, config, slo, rel_tol=rel_tol, floor=scale, timers=timers,
                                max_probes=1, early_stop=early_stop).pruned

    # start between two estimates of the baseline's goodput there, each off by up to 2x in the
    # evaluation (geometric mean): the latency model's (for the whole trace, divided by how much busier
    # the window is than the trace) and the verification's (rescaled by the two windows' mean rates)
    busier = max(ct.trace.mean_rate_rps / max(prepared.trace.mean_rate_rps, 1e-12), 1.0)
    predicted = (baseline.predicted_goodput_scale or 1.0) / busier
    verified = (baseline.simulated_goodput_scale or predicted) * vt.trace.mean_rate_rps / max(
        ct.trace.mean_rate_rps, 1e-12)
    scale = (predicted * verified) ** 0.5
    confirmed, lo, bar = paired_decision(lambda x: meets(baseline, x), lambda x: meets(challenger, x),
                                         max(scale, 1e-3), rel_tol)
    return Confirmation(len(ct.trace), challenger.describe(), lo, bar, confirmed, probes,
                        baseline.describe())


def paired_decision(baseline_meets: Callable[[float], bool], challenger_meets: Callable[[float], bool],
                    start: float, rel_tol: float, step: float = CONFIRM_STEP,
                    max_probes: int = CONFIRM_MAX_PROBES) -> tuple[bool, float, float]:
    """Does the challenger meet the target at a scale where the baseline misses, at least ``1 + rel_tol``
    above the baseline's highest passing scale? The baseline's boundary is bracketed from ``start`` (steps
    of ``step``) and bisected to ``rel_tol``; the challenger is probed at each new lowest scale where the
    baseline misses, so it stops at the first such pass. Returns (confirmed, the baseline's highest
    passing scale (0: none), the last scale the challenger had to meet)."""
    lo: float | None = None  # the baseline meets the target here ...
    hi: float | None = None  # ... and misses here
    scale, tried, bar = start, 0.0, 0.0
    for _ in range(max_probes):
        if baseline_meets(scale):
            lo = scale
        else:
            hi = scale
        if hi is not None:
            bar = max(hi, (lo or 0.0) * (1 + rel_tol))
            if bar != tried:
                tried = bar
                if challenger_meets(bar):
                    return True, lo or 0.0, bar
            if lo is not None and hi / lo <= 1 + rel_tol:
                break
        if lo is not None and hi is not None:
            scale = (lo * hi) ** 0.5
        else:
            scale = scale * step if hi is None else scale / step
    return False, lo or 0.0, bar


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


__all__ = ["CONFIRM_FACTOR", "MIN_VERIFY_REQUESTS", "REQUESTS_PER_REPLICA", "Confirmation", "Verification",
           "colocated_first", "confirm", "decide", "paired_decision", "plan_with_slo",
           "verification_trace", "verify_shortlist"]
