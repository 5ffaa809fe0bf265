"""SLO goodput of a plan: the highest rate scale of the trace at which every type meets its SLO target.

A scale is *good* when, simulating the trace replayed at that many times its rate, every request type
with requests has at least the target share of requests meeting their SLO (TTFT from arrival, so
queueing counts; dropped requests miss). The search is ``sim.rate_search.search_scale`` (bracket by
doubling or halving from the start scale within [1/64, 64], then bisect geometrically to ``rel_tol``,
3%), which assumes attainment falls with load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.planner.plan import Plan
from oserve.planner.spill_rule import trace_type_slos
from oserve.sim.config import SimConfig
from oserve.sim.metrics import Attainment, SimResult, per_type_latency, slo_attainment
from oserve.sim.rate_search import search_scale
from oserve.workload.slo import Slo, SloSpec

MIN_SCALE = 1.0 / 64
MAX_SCALE = 1024.0  # a 256-GPU fleet carries ~60x the Azure traces
FLOOR_STEP = 1.25  # above a floor that holds, the first bracket probe


@dataclass(frozen=True)
class GoodputProbe:
    scale: float
    attainment: Attainment
    ok: bool


@dataclass
class GoodputResult:
    """The highest good scale (0 when even ``MIN_SCALE`` misses) and what was simulated to find it."""

    scale: float
    target: float
    probes: list[GoodputProbe] = field(default_factory=list)
    best: SimResult | None = None  # the simulation at ``scale``
    pruned: bool = False  # the search had a floor and missed there (``scale`` 0: below the floor)

    @property
    def attainment(self) -> Attainment | None:
        for p in self.probes:
            if p.ok and p.scale == self.scale:
                return p.attainment
        return None

    def to_dict(self, num_types: int) -> dict:
        att = self.attainment
        return {"goodput_scale": self.scale, "attainment_target": self.target,
                "attainment_at_goodput": att.to_dict() if att else None,
                "per_type_p99_at_goodput": per_type_latency(self.best, num_types) if self.best else None,
                "probes": [{"scale": p.scale, "overall": p.attainment.overall,
                            "per_type": list(p.attainment.per_type), "ok": p.ok} for p in self.probes]}


def search_goodput_scale(evaluate: Callable[[float], tuple[Attainment, SimResult | None]],
                         target: float, start_scale: float = 1.0, rel_tol: float = 0.03,
                         max_probes: int = 24, floor: float = 0.0) -> GoodputResult:
    """``evaluate(scale)`` simulates at ``scale`` and returns (attainment, the simulation).

    With ``floor`` the caller wants only scales above it (another plan already reaches it): the search
    starts there and gives up after that one probe (``pruned``) when it misses."""
    if not 0 < target <= 1 or start_scale <= 0 or rel_tol <= 0:
        raise ConfigError("goodput search needs a target in (0, 1], a positive start scale and tolerance")
    result = GoodputResult(0.0, target)

    def probe(scale: float) -> bool:
        att, sim = evaluate(scale)
        ok = att.meets(target)
        result.probes.append(GoodputProbe(scale, att, ok))
        if ok and scale >= result.scale:
            result.scale, result.best = scale, sim
        return ok

    lo = None
    scale = start_scale
    if floor > 0:
        if not probe(floor):
            result.pruned = True
            return result
        # a plan that beats another rarely beats it by much: bracket just above first, then double
        lo, scale = floor, min(floor * FLOOR_STEP, MAX_SCALE)
    search_scale(probe, scale, rel_tol, max_probes - len(result.probes), MIN_SCALE, MAX_SCALE, lo)
    return result


def prepared_type_slos(prepared, slo: SloSpec) -> tuple[Slo, ...]:
    """Each request type's SLO on a prepared trace (the tightest of its requests'), as the ``slo-spill``
    dispatch reads them."""
    return trace_type_slos(prepared.types, prepared.trace.input_tokens, slo)


def plan_goodput(plan: Plan, prepared, cost_model: CostModel, config: SimConfig, slo: SloSpec,
                 start_scale: float = 1.0, rel_tol: float = 0.03, floor: float = 0.0,
                 timers: dict | None = None, max_probes: int = 24) -> GoodputResult:
    """Goodput scale of ``plan`` on a prepared trace (``oserve.sim.experiment.PreparedTrace``); ``floor``
    as in ``search_goodput_scale`` (with ``max_probes=1``: only whether the plan meets the target there),
    ``timers`` shares step times across the probes (and plans)."""
    from oserve.sim.experiment import simulate_at  # experiment imports the planner front end

    names = prepared.types.names()
    type_slos = prepared_type_slos(prepared, slo) if config.dispatch == "slo-spill" else None

    def evaluate(scale: float) -> tuple[Attainment, SimResult]:
        res = simulate_at(plan, prepared, cost_model, config, scale, timers=timers, type_slos=type_slos)
        ttft, tpot = slo.bounds(res.type_id, names, res.input_tokens)
        return slo_attainment(res, ttft, tpot, len(names)), res

    return search_goodput_scale(evaluate, slo.attainment, start_scale, rel_tol, max_probes, floor=floor)


__all__ = ["GoodputProbe", "GoodputResult", "plan_goodput", "prepared_type_slos", "search_goodput_scale"]
