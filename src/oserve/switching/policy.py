"""The cost-aware switching policy: each control interval, re-plan for the forecast and switch only when
the expected gain over a horizon exceeds the cost of switching.

Everything is priced in requests at risk. A deployment that can carry ``scale`` times the forecast rates
runs at utilisation 1/scale; above the target utilisation u* latency climbs steeply, so the rate of
requests it cannot serve well is ``deficit = total_rate x max(0, 1 - scale x u*)`` per second. Switching
to a target gains ``(deficit_now - deficit_target) x (horizon - switch time)`` and costs
``(deficit_during - deficit_now) x switch time``, where during the switch only the replicas that stay
serve. The switch time is the drain budget, plus the weight transfer (peer-to-peer plan or reload from
storage), plus an engine restart overhead. The policy switches when gain > (1 + hysteresis) x cost +
min_gain and at least ``min_gap_s`` has passed since the last switch. It re-plans warm-started from the
current deployment and keeps that nearby result when it is within ``near_tolerance`` of the best found
from scratch. The policy is pure: the simulator and the runtime call ``decide`` with the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict, Unpack

import numpy as np
from numpy.typing import ArrayLike

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner import references
from oserve.planner.api import build_plan
from oserve.planner.plan import Plan, Replica
from oserve.planner.problem import Counts, PlanningProblem
from oserve.planner.search import SearchParams, flow_guided_search
from oserve.switching.links import LinkModel
from oserve.switching.transfer import TransferPlan, plan_greedy, transfer_problem
from oserve.switching.transition import Transition, counts_of, plan_transition
from oserve.workload.request_types import TypeStats

TRANSFER_MODES = ("p2p", "reload")


@dataclass(frozen=True)
class SwitchParams:
    horizon_s: float = 600.0
    min_gap_s: float = 300.0
    hysteresis: float = 0.2
    min_gain_requests: float = 1.0
    near_tolerance: float = 0.03
    target_utilisation: float = 0.8
    drain_s: float = 5.0
    restart_overhead_s: float = 5.0  # engine start, communicator set-up, CUDA graph capture
    transfer_mode: str = "p2p"

    def __post_init__(self) -> None:
        if self.transfer_mode not in TRANSFER_MODES:
            raise ConfigError(f"transfer mode must be one of {TRANSFER_MODES}, got '{self.transfer_mode}'")
        if self.horizon_s <= 0 or self.min_gap_s < 0 or self.hysteresis < 0:
            raise ConfigError("switch policy: horizon > 0, min gap >= 0, hysteresis >= 0")
        if not 0 < self.target_utilisation <= 1 or not 0 <= self.near_tolerance < 1:
            raise ConfigError("switch policy: target utilisation in (0, 1], near tolerance in [0, 1)")


Planner = Callable[[list[TypeStats], dict[ReplicaConfig, int]], Plan]


@dataclass(frozen=True)
class SwitchContext:
    """What stays fixed over a run: the cluster, the cost model, the types' shapes, the links."""

    cluster: ClusterSpec
    cost: CostModel
    type_template: tuple[TypeStats, ...]
    links: LinkModel
    planner: Planner | None = field(default=None, compare=False)  # injected in tests
    search: SearchParams = SearchParams()


@dataclass(frozen=True)
class SwitchDecision:
    switch: bool
    reason: str
    plan: Plan | None  # what to run next: the target, or the current replicas re-dispatched
    transition: Transition | None = None
    transfer: TransferPlan | None = None
    switch_s: float = 0.0
    gain_requests: float = 0.0
    cost_requests: float = 0.0
    scale_current: float = 0.0
    scale_target: float = 0.0
    scale_during: float = 0.0
    decide_seconds: float = 0.0


class _Scores(TypedDict, total=False):
    """The pricing of a candidate switch, carried into the decision whether or not it switches."""

    transition: Transition
    transfer: TransferPlan
    switch_s: float
    gain_requests: float
    cost_requests: float
    scale_target: float
    scale_during: float


def deficit_rps(scale: float, total_rps: float, target_utilisation: float) -> float:
    """Requests/s beyond what a deployment serves at the target utilisation."""
    return total_rps * max(0.0, 1.0 - scale * target_utilisation)


def forecast_types(template: Sequence[TypeStats], rates_rps: ArrayLike) -> list[TypeStats]:
    rates = np.maximum(np.asarray(rates_rps, dtype=float), 0.0)
    if len(rates) != len(template):
        raise ConfigError(f"forecast has {len(rates)} rates for {len(template)} request types")
    return [replace(t, rate_rps=float(r)) for t, r in zip(template, rates)]


def place_plan(plan: Plan, replicas: tuple[Replica, ...]) -> Plan:
    """``plan``'s dispatch moved onto ``replicas`` (same configs, other GPUs and ids)."""
    free: dict[ReplicaConfig, list[int]] = {}
    for r in plan.replicas:
        free.setdefault(r.config, []).append(r.replica_id)
    order: list[int] = []
    for r in replicas:
        if not free.get(r.config):
            raise InfeasiblePlanError(f"replica {r.config.label()} is not in the plan")
        order.append(free[r.config].pop(0))
    return replace(plan, replicas=tuple(replicas),
                   capacity_rps=tuple(plan.capacity_rps[i] for i in order),
                   dispatch=tuple(tuple(row[i] for i in order) for row in plan.dispatch),
                   utilisation=tuple(plan.utilisation[i] for i in order),
                   bottlenecks=tuple(j for j, i in enumerate(order) if i in plan.bottlenecks))


def _counts(problem: PlanningProblem, replicas: Iterable[Replica]) -> Counts:
    have = counts_of(replicas)
    unknown = set(have) - set(problem.configs)
    if unknown:
        raise ConfigError(f"current replicas {sorted(c.label() for c in unknown)} are not valid configs")
    return tuple(have.get(c, 0) for c in problem.configs)


def _candidate(ctx: SwitchContext, params: SwitchParams, problem: PlanningProblem, types: list[TypeStats],
               current: Counts) -> Plan:
    if ctx.planner is not None:
        return ctx.planner(types, problem.as_dict(current))
    t0 = time.perf_counter()
    best = flow_guided_search(problem, references.homogeneous(problem), ctx.search)
    if problem.feasible(current) and sum(current) != 0:
        near = flow_guided_search(problem, current, ctx.search)
        if problem.scale(near) >= (1 - params.near_tolerance) * problem.scale(best):
            best = near
    return build_plan(problem, best, "oserve-adaptive", time.perf_counter() - t0)


def _fits(ctx: SwitchContext, plan: Plan) -> str:
    seen: set[int] = set()
    for r in plan.replicas:
        if not ctx.cost.fits(r.config):
            return f"replica {r.config.label()} does not fit {ctx.cost.model.name} in memory"
        if len(r.gpus) != r.config.num_gpus or seen & set(r.gpus):
            return "target replicas overlap or have the wrong number of GPUs"
        if any(g >= ctx.cluster.num_gpus or ctx.cluster.gpus[g].gpu_type != r.config.gpu_type
               for g in r.gpus):
            return "target replica placed on GPUs of another type or outside the cluster"
        seen |= set(r.gpus)
    return ""


def _current_plan(problem: PlanningProblem, replicas: Iterable[Replica], current: Counts) -> Plan | None:
    try:
        return place_plan(build_plan(problem, current, "current", 0.0), tuple(replicas))
    except InfeasiblePlanError:
        return None


def switch_duration_s(ctx: SwitchContext, params: SwitchParams, transition: Transition
                      ) -> tuple[float, TransferPlan]:
    problem = transfer_problem(transition, ctx.cost)
    transfer = plan_greedy(problem, ctx.links, use_peers=params.transfer_mode == "p2p")
    return params.drain_s + transfer.duration_s + params.restart_overhead_s, transfer


def decide(ctx: SwitchContext, params: SwitchParams, replicas: tuple[Replica, ...],
           last_switch_s: float | None, now_s: float, forecast_rps: ArrayLike) -> SwitchDecision:
    """Whether to switch from ``replicas`` for the forecast rates, and to what."""
    t0 = time.perf_counter()
    types = forecast_types(ctx.type_template, forecast_rps)
    problem = PlanningProblem(ctx.cluster, ctx.cost, types)
    current = _counts(problem, replicas)
    hold_plan = _current_plan(problem, replicas, current)
    s_cur = problem.scale(current)

    def hold(reason: str, **kw: Unpack[_Scores]) -> SwitchDecision:
        return SwitchDecision(False, reason, hold_plan, scale_current=s_cur,
                              decide_seconds=time.perf_counter() - t0, **kw)

    if last_switch_s is not None and now_s - last_switch_s < params.min_gap_s:
        return hold(f"last switch {now_s - last_switch_s:.0f} s ago, minimum gap {params.min_gap_s:g} s")
    target = _candidate(ctx, params, problem, types, current)
    problem_why = _fits(ctx, target)
    if problem_why:
        return hold(f"target rejected: {problem_why}")
    transition = plan_transition(replicas, counts_of(target.replicas), ctx.cluster)
    if transition.is_noop:
        return hold("the best deployment is the current one")
    switch_s, transfer = switch_duration_s(ctx, params, transition)
    kept_ids = {a for a, _ in transition.kept}
    during = _counts(problem, [r for r in replicas if r.replica_id in kept_ids])
    s_tgt = problem.scale(tuple(counts_of(target.replicas).get(c, 0) for c in problem.configs))
    s_during = problem.scale(during) if sum(during) else 0.0
    total = float(sum(t.rate_rps for t in types))
    u = params.target_utilisation
    d_cur, d_tgt, d_dur = (deficit_rps(s, total, u) for s in (s_cur, s_tgt, s_during))
    gain = (d_cur - d_tgt) * max(0.0, params.horizon_s - switch_s)
    cost = max(0.0, d_dur - d_cur) * switch_s
    scores = _Scores(transition=transition, transfer=transfer, switch_s=switch_s, gain_requests=gain,
                     cost_requests=cost, scale_target=s_tgt, scale_during=s_during)
    if gain <= (1 + params.hysteresis) * cost + params.min_gain_requests:
        return hold(f"gain {gain:.0f} req does not pay for cost {cost:.0f} req "
                    f"(+{params.hysteresis:.0%} hysteresis, +{params.min_gain_requests:g})", **scores)
    placed = place_plan(target, transition.target)
    return SwitchDecision(True, f"gain {gain:.0f} req > cost {cost:.0f} req", placed,
                          scale_current=s_cur, decide_seconds=time.perf_counter() - t0, **scores)
