"""The switching policy, priced in SLO goodput: each control interval, re-plan for the forecast and
switch only when the requests that meet their SLO over a horizon gain more than the switch loses.

The latency model (``switching.goodput_price``) predicts the forecast good rate (requests/s meeting their
SLO; averaged over the forecast's error, ``SwitchParams.forecast_error``) of the current deployment
(its replicas re-dispatched for the forecast), g_cur; of each candidate target, g_tgt; and of the
replicas that stay during the switch (they alone serve, with the target's dispatch restricted to them),
g_dur. A switch lasting ``switch_s`` (drain budget + weight transfer on the greedy plan, peer-to-peer or
reloaded from storage + engine restart) gains
``(g_tgt - g_cur) x (horizon - switch_s)`` and costs ``max(0, g_cur - g_dur) x switch_s``. A replica that
changes only its engine settings (chunk budget, max sequences) is restarted on its own GPUs with its
weights in place: no transfer, the switch costs drain + restart (``transition.plan_transition``).

Candidates are the SLO planner's shortlist (``planner.slo_planner.GoodputPlanner``) for the forecast;
the one of highest net gain ``gain - (1 + hysteresis) x cost`` is taken when that exceeds
``min_gain_requests`` plus ``min_gain_frac`` of the requests the current deployment serves well over the
horizon, and at least ``min_gap_s`` has passed since the last switch. ``blind`` (an ablation) takes the
planner's best whenever it differs. The policy is pure: the simulator and the runtime call ``decide``
with the same inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict, Unpack

import numpy as np
from numpy.typing import ArrayLike

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.slo_capacity import SloWorkload
from oserve.planner.plan import Plan, Replica
from oserve.planner.slo_planner import Candidate, GoodputPlanner, candidate_plan
from oserve.switching.elastic import ElasticOption, choose, resized_fleets
from oserve.switching.goodput_price import (
    GoodputPricer,
    LatencyModels,
    default_slo_workload,
    forecast_factors,
    forecast_workload,
    restrict,
)
from oserve.switching.links import LinkModel
from oserve.switching.switch_schedule import SwitchSchedule, switch_schedule
from oserve.switching.transfer import TransferPlan, plan_greedy, transfer_problem
from oserve.switching.transition import Transition, counts_of, plan_transition
from oserve.workload.request_types import TypeStats

TRANSFER_MODES = ("p2p", "reload")
POLICY_OBJECTIVES = ("goodput", "min-gpus")


@dataclass(frozen=True)
class SwitchParams:
    horizon_s: float = 600.0
    min_gap_s: float = 300.0
    hysteresis: float = 0.2
    min_gain_requests: float = 1.0
    min_gain_frac: float = 0.01  # of the requests the current deployment serves well over the horizon
    drain_s: float = 5.0
    restart_overhead_s: float = 5.0  # engine start, communicator set-up, CUDA graph capture
    transfer_mode: str = "p2p"
    blind: bool = False  # ablation: switch whenever the planner's best differs, unpriced
    num_candidates: int = 3  # of the SLO planner's shortlist
    objective: str = "goodput"  # or "min-gpus": size the fleet to the forecast (elastic)
    elastic_headroom: float = 1.25  # min-gpus: the fleet must meet the target at this x the forecast
    elastic_max_loss_frac: float = 0.03  # min-gpus: a shrink may lose this share of the good requests
    # relative RMS error of a one-interval rate forecast, priced (goodput objective) as equally likely
    # factors of the forecast: 0.29-0.41 measured for the best baseline at 60 s windows on the real Azure
    # conversation and mixed hours (docs/forecasting.md); 0 prices at the forecast alone. The elastic
    # objective prices at the forecast: its headroom is its margin.
    forecast_error: float = 0.4

    def __post_init__(self) -> None:
        if self.transfer_mode not in TRANSFER_MODES:
            raise ConfigError(f"transfer mode must be one of {TRANSFER_MODES}, got '{self.transfer_mode}'")
        if self.horizon_s <= 0 or self.min_gap_s < 0 or self.hysteresis < 0:
            raise ConfigError("switch policy: horizon > 0, min gap >= 0, hysteresis >= 0")
        if self.min_gain_frac < 0 or self.num_candidates < 1:
            raise ConfigError("switch policy: min gain fraction >= 0, at least one candidate")
        if self.objective not in POLICY_OBJECTIVES or self.elastic_headroom < 1:
            raise ConfigError(f"switch policy: objective one of {POLICY_OBJECTIVES}, headroom >= 1")
        if self.forecast_error < 0:
            raise ConfigError(f"switch policy: forecast error >= 0, got {self.forecast_error}")

    @property
    def price_factors(self) -> tuple[float, ...]:
        """The factors of the forecast a price averages over (``goodput_price.forecast_factors``)."""
        return forecast_factors(self.forecast_error) if self.objective == "goodput" else (1.0,)


Planner = Callable[[list[TypeStats], dict[ReplicaConfig, int]], Plan]


@dataclass(frozen=True)
class SwitchContext:
    """What stays fixed over a run: the cluster, the cost model, the types' shapes, the links, the SLO
    workload whose rates the forecasts replace (None: ``goodput_price.default_slo_workload``)."""

    cluster: ClusterSpec
    cost: CostModel
    type_template: tuple[TypeStats, ...]
    links: LinkModel
    planner: Planner | None = field(default=None, compare=False)  # injected in tests
    slo: SloWorkload | None = None
    models: LatencyModels = field(default_factory=dict, compare=False, repr=False)  # memo, shared

    def __post_init__(self) -> None:
        if self.slo is not None and self.slo.num_types != len(self.type_template):
            raise ConfigError(f"switch context: {len(self.type_template)} request types but the SLO "
                              f"workload has {self.slo.num_types}")

    def workload(self, types: Sequence[TypeStats]) -> SloWorkload:
        return forecast_workload(self.slo or default_slo_workload(self.type_template), types)


@dataclass(frozen=True)
class SwitchDecision:
    switch: bool
    reason: str
    plan: Plan | None  # what to run next: the target, or the current replicas re-dispatched
    transition: Transition | None = None
    transfer: TransferPlan | None = None
    switch_s: float = 0.0
    schedule: SwitchSchedule | None = None  # when the drain ends and the started replicas load and join
    gain_requests: float = 0.0
    cost_requests: float = 0.0
    good_rps_current: float = 0.0  # forecast requests/s meeting their SLO
    good_rps_target: float = 0.0
    good_rps_during: float = 0.0
    decide_seconds: float = 0.0


class _Scores(TypedDict, total=False):
    """The pricing of a candidate switch, carried into the decision whether or not it switches."""

    transition: Transition
    transfer: TransferPlan
    switch_s: float
    schedule: SwitchSchedule
    gain_requests: float
    cost_requests: float
    good_rps_target: float
    good_rps_during: float


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


def switch_duration_s(ctx: SwitchContext, params: SwitchParams, transition: Transition
                      ) -> tuple[SwitchSchedule, TransferPlan]:
    """The switch's timeline (``switch_schedule``: a bounded drain, then the weights, then the restart;
    its ``ready_s`` is the duration priced) and the weight transfer plan."""
    problem = transfer_problem(transition, ctx.cost)
    transfer = plan_greedy(problem, ctx.links, use_peers=params.transfer_mode == "p2p")
    return switch_schedule(transition, params.drain_s, transfer.duration_s,
                           params.restart_overhead_s), transfer


def _as_plan(pricer: GoodputPricer, replicas: tuple[Replica, ...], fractions: np.ndarray, name: str,
             seconds: float) -> Plan:
    return candidate_plan(Candidate(name, replicas, np.asarray(fractions, dtype=float), 0.0), pricer.cost,
                          pricer.types, "goodput", name, seconds)


def _candidates(ctx: SwitchContext, params: SwitchParams, pricer: GoodputPricer,
                replicas: tuple[Replica, ...]) -> list[Plan]:
    if ctx.planner is not None:
        return [ctx.planner(pricer.types, counts_of(replicas))]
    t0 = time.perf_counter()
    if params.objective == "min-gpus":
        padded = replace(pricer.workload, rates_rps=tuple(r * params.elastic_headroom
                                                          for r in pricer.workload.rates_rps))
        gp = GoodputPlanner(ctx.cluster, ctx.cost, pricer.types, padded, models=ctx.models)
        try:
            shortlist = [gp.min_gpus()]
        except InfeasiblePlanError:  # no fleet meets it: the whole cluster at its best
            gp = GoodputPlanner(ctx.cluster, ctx.cost, pricer.types, pricer.workload, models=ctx.models)
            shortlist = gp.shortlist(1)
    else:
        gp = GoodputPlanner(ctx.cluster, ctx.cost, pricer.types, pricer.workload, models=ctx.models)
        shortlist = gp.shortlist(params.num_candidates)
    return [candidate_plan(c, ctx.cost, pricer.types, "goodput", "oserve-adaptive", time.perf_counter() - t0)
            for c in shortlist]


def _price(ctx: SwitchContext, params: SwitchParams, pricer: GoodputPricer, replicas: tuple[Replica, ...],
           target: Plan, good_cur: float) -> _Scores | str:
    """The pricing of a switch to ``target`` (a reason string when it is no switch or not possible)."""
    why = _fits(ctx, target)
    if why:
        return f"target rejected: {why}"
    try:
        transition = plan_transition(replicas, counts_of(target.replicas), ctx.cluster)
    except InfeasiblePlanError as e:
        return f"target rejected: {e}"
    if transition.is_noop:
        return "the best deployment is the current one"
    schedule, transfer = switch_duration_s(ctx, params, transition)
    switch_s = schedule.ready_s
    placed = place_plan(target, transition.target)
    fractions = np.asarray(placed.dispatch, dtype=float)
    good_tgt = pricer.good_rps(placed.replicas, fractions)
    kept_new = sorted(b for _, b in transition.kept)
    kept = tuple(placed.replicas[b] for b in kept_new)
    good_dur = pricer.good_rps(kept, restrict(fractions, kept_new)) if kept else 0.0
    gain = (good_tgt - good_cur) * max(0.0, params.horizon_s - switch_s)
    cost = max(0.0, good_cur - good_dur) * switch_s
    return _Scores(transition=transition, transfer=transfer, switch_s=switch_s, schedule=schedule,
                   gain_requests=gain,
                   cost_requests=cost, good_rps_target=good_tgt, good_rps_during=good_dur)


def decide(ctx: SwitchContext, params: SwitchParams, replicas: tuple[Replica, ...],
           last_switch_s: float | None, now_s: float, forecast_rps: ArrayLike) -> SwitchDecision:
    """Whether to switch from ``replicas`` for the forecast rates, and to what."""
    t0 = time.perf_counter()
    types = forecast_types(ctx.type_template, forecast_rps)
    replicas = tuple(replicas)
    pricer = GoodputPricer(ctx.cluster, ctx.cost, ctx.workload(types), types, ctx.models,
                           params.price_factors)
    if sum(t.rate_rps for t in types) <= 0:
        return SwitchDecision(False, "no traffic forecast", None, decide_seconds=time.perf_counter() - t0)
    fractions = pricer.dispatch(replicas)
    hold_plan = _as_plan(pricer, replicas, fractions, "current", 0.0)
    good_cur = pricer.good_rps(replicas, fractions)

    def hold(reason: str, **kw: Unpack[_Scores]) -> SwitchDecision:
        return SwitchDecision(False, reason, hold_plan, good_rps_current=good_cur,
                              decide_seconds=time.perf_counter() - t0, **kw)

    if last_switch_s is not None and now_s - last_switch_s < params.min_gap_s:
        return hold(f"last switch {now_s - last_switch_s:.0f} s ago, minimum gap {params.min_gap_s:g} s")
    priced_all: list[tuple[float, Plan, _Scores]] = []
    reason = "no candidate"
    candidates = _candidates(ctx, params, pricer, replicas)
    if params.objective == "min-gpus" and ctx.planner is None:
        candidates += [_as_plan(pricer, fleet, even, "resize", 0.0) for fleet, even in
                       resized_fleets(pricer, ctx.cluster, replicas, params.elastic_headroom)]
    for target in candidates:
        priced = _price(ctx, params, pricer, replicas, target, good_cur)
        if isinstance(priced, str):
            reason = priced if not priced_all else reason
            if params.blind:
                break  # blind takes the planner's best or nothing
            continue
        net = priced["gain_requests"] - (1 + params.hysteresis) * priced["cost_requests"]
        priced_all.append((net, target, priced))
        if params.blind:
            break
    if not priced_all:
        return hold(reason)
    if params.objective == "min-gpus" and not params.blind:
        return _decide_elastic(params, pricer, replicas, fractions, priced_all, good_cur, hold, t0)
    net, target, scores = max(priced_all, key=lambda x: x[0])
    gain, cost = scores["gain_requests"], scores["cost_requests"]
    need = params.min_gain_requests + params.min_gain_frac * good_cur * params.horizon_s
    if not params.blind and net <= need:
        return hold(f"gain {gain:.0f} req does not pay for cost {cost:.0f} req "
                    f"(+{params.hysteresis:.0%} hysteresis, +{need:.0f} req)", **scores)
    placed = place_plan(target, scores["transition"].target)
    return SwitchDecision(True, f"gain {gain:.0f} req > cost {cost:.0f} req", placed,
                          good_rps_current=good_cur, decide_seconds=time.perf_counter() - t0, **scores)


def _decide_elastic(params: SwitchParams, pricer: GoodputPricer, replicas: tuple[Replica, ...],
                    fractions: np.ndarray, priced: list[tuple[float, Plan, _Scores]], good_cur: float,
                    hold: Callable[..., SwitchDecision], t0: float) -> SwitchDecision:
    current_gpus = sum(r.config.num_gpus for r in replicas)
    options = [ElasticOption(i, p.num_gpus, sc["gain_requests"], sc["cost_requests"], sc["good_rps_target"])
               for i, (_, p, sc) in enumerate(priced)]
    chosen, why = choose(options, current_gpus, pricer.meets(replicas, fractions, params.elastic_headroom),
                         good_cur, params.horizon_s, params.hysteresis, params.min_gain_requests,
                         params.elastic_max_loss_frac)
    if chosen is None:
        return hold(why)
    _, target, scores = priced[chosen.index]
    placed = place_plan(target, scores["transition"].target)
    reason = (f"resize {current_gpus} -> {placed.num_gpus} GPUs (gain {scores['gain_requests']:.0f} req, "
              f"cost {scores['cost_requests']:.0f} req)")
    return SwitchDecision(True, reason, placed, good_rps_current=good_cur,
                          decide_seconds=time.perf_counter() - t0, **scores)
