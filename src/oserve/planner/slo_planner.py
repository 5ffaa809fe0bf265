"""Planning for SLO goodput: engine settings from a grid, homogeneous-tuned fleets, and a shortlist.

Objectives (``OBJECTIVES``):

* ``goodput``: the largest uniform scale of the trace's per-type rates at which every type's predicted
  attainment reaches the target (``costmodel.slo_capacity.predicted_goodput_scale``);
* ``min-gpus``: the fewest GPUs that carry the trace's rates (scale 1) at the target;
* ``throughput``: the max-concurrent-flow objective of ``planner.api`` (no latency model).

Candidates:

* **homogeneous-tuned**: every hardware configuration at every chunk budget of ``ENGINE_BUDGETS``,
  replicated over the cluster, types spread evenly; the best predicted one is the strongest static
  baseline (best configuration *and* best uniform engine settings);
* **oserve**: the flow-guided search of ``planner.search`` over the best few tuned configurations, with
  per-type SLO capacities (``slo_capacity_rps``) in the dispatch LP; its plan is then scored by the
  latency model on the co-located mixes the LP dispatch gives each replica.

* **disaggregated** (with ``disaggregation=True``): prefill/decode groups, alone or beside colocated
  replicas (``planner.disagg_search``), scored by the group latency model.

``GoodputPlanner.shortlist`` returns the best plans by predicted goodput and always includes the best
homogeneous-tuned fleet (and the searched colocated plan; with disaggregation, the best four
group candidates, each layout family's best and the Dynamo-style split besides), so that a
simulator verifying the shortlist (``sim.verify``) never returns a plan worse than it on the
verification trace. ``max_num_seqs`` stays at the engine default (256): under TTFT/TPOT SLOs the chunk
budget is what trades latency for throughput, and the model checks the seats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.slo_capacity import (
    SloWorkload,
    fleet_attainment,
    meets_target,
    predicted_goodput_scale,
    slo_capacity_rps,
)
from oserve.planner.disagg_search import (
    DisaggScorer,
    even_fractions,
    layouts,
    pair_configs,
    search_groups,
)
from oserve.planner.placement import candidate_configs, fits_cluster, gpus_by_type, pack
from oserve.planner.plan import Plan, Replica
from oserve.workload.burstiness import Burstiness, length_samples
from oserve.workload.request_types import RequestTypes, TypeStats
from oserve.workload.slo import SloSpec
from oserve.workload.trace import Trace

OBJECTIVES = ("goodput", "min-gpus", "throughput")
ENGINE_BUDGETS = (512, 1024, 2048, 4096, 8192)
NUM_SEARCH_CONFIGS = 4  # tuned configurations the oserve search mixes
SEARCH_CAPACITY_TOL = 0.1  # bisection tolerance of the SLO capacities the search's LP uses
# Group candidates verified beside the colocated ones, best predicted first. Four, not more: verifying
# every group predicted within half of the best one (up to 16) picked, on 32 GPUs of azure-conv, a group
# 1.33x the colocated plan on the verification window and 0.94x on the whole trace (the window is too
# short for its decode pool to fill; docs/evaluation-disaggregation.md), and won nothing elsewhere.
NUM_SHORTLIST_GROUPS = 4


def slo_workload(trace: Trace, types: RequestTypes, stats: list[TypeStats], slo: SloSpec) -> SloWorkload:
    """What latency planning needs of a (clipped) trace typed as the router will type it."""
    type_id = types.classify_online(trace.input_tokens)
    return SloWorkload(tuple(length_samples(trace, type_id, types.k, max_samples=32)),
                       tuple(float(s.rate_rps) for s in stats),
                       tuple(slo.type_slos(type_id, types.names(), trace.input_tokens)),
                       Burstiness.of_trace(trace, type_id, types.k), slo.attainment)


@dataclass(frozen=True)
class Candidate:
    """A deployment with its dispatch and predicted goodput scale."""

    kind: str
    replicas: tuple[Replica, ...]
    fractions: np.ndarray  # (types, replicas)
    predicted_scale: float
    exact: bool = True  # False: predicted_scale is only an upper bound (pruned, see homogeneous_tuned)

    @property
    def num_gpus(self) -> int:
        return sum(r.config.num_gpus for r in self.replicas)


class GoodputPlanner:
    """Candidates for one cluster, model and SLO workload; latency models shared across candidates."""

    def __init__(self, cluster: ClusterSpec, cost: CostModel, stats: list[TypeStats],
                 workload: SloWorkload, allow_pp: bool = True,
                 budgets: tuple[int, ...] = ENGINE_BUDGETS, weight_formats: tuple[str, ...] = ("bf16",),
                 kv_formats: tuple[str, ...] = ("bf16",), disaggregation: bool = False,
                 models: dict[ReplicaConfig, ReplicaLatencyModel] | None = None) -> None:
        if len(stats) != workload.num_types:
            raise ConfigError(f"{len(stats)} request types but the SLO workload has {workload.num_types}")
        self.cluster, self.cost, self.stats, self.workload = cluster, cost, stats, workload
        self.hardware = candidate_configs(cluster, cost, allow_pp, weight_formats, kv_formats)
        self.budgets = budgets
        # latency models by configuration; a caller planning again and again for other rates of the same
        # length samples and SLOs (the switching policy) passes one dict to share their memo tables
        self._models: dict[ReplicaConfig, ReplicaLatencyModel] = {} if models is None else models
        self._step_caches: dict[ReplicaConfig, dict[str, dict[tuple[float, float], float]]] = {}
        self._tuned: list[Candidate] | None = None
        self.disaggregation = disaggregation
        self._disagg: DisaggScorer | None = None

    def model(self, cfg: ReplicaConfig) -> ReplicaLatencyModel:
        if cfg not in self._models:
            shared = self._step_caches.setdefault(cfg.timing, {})  # engine variants share step times
            self._models[cfg] = ReplicaLatencyModel(self.cost, cfg, shared)
        return self._models[cfg]

    def predicted_scale(self, replicas: tuple[Replica, ...], fractions: np.ndarray,
                        start: float | None = None) -> float:
        if any(r.group is not None for r in replicas):
            return self.scorer.predicted_scale(replicas, fractions, start or self._start(replicas))
        return predicted_goodput_scale([self.model(r.config) for r in replicas], fractions, self.workload,
                                       start=start or self._start(replicas))

    def _start(self, replicas: tuple[Replica, ...]) -> float:
        """A starting scale for the bracket: the throughput the replicas carry, halved."""
        loads = [TypeLoad(s.mean_input_tokens, s.mean_output_tokens) for s in self.stats]
        demand = np.asarray(self.workload.rates_rps)
        per = [sum(self.cost.type_capacity_rps(r.config.hardware, ld) for r in replicas) for ld in loads]
        with np.errstate(divide="ignore"):
            ratios = np.where(demand > 0, np.asarray(per) / np.maximum(demand, 1e-12), np.inf)
        best = float(np.min(ratios)) if np.isfinite(ratios).any() else 1.0
        return max(best * 0.5, 1e-3)

    # ---- homogeneous-tuned -----------------------------------------------------------------------

    def homogeneous_tuned(self) -> list[Candidate]:
        """Every tuned configuration replicated over the cluster, best predicted goodput first.

        Only the best ``NUM_SEARCH_CONFIGS`` (what the search and the shortlist use) are bisected to the
        tolerance: candidates go in order of throughput capacity, and each is first tested at the
        ``NUM_SEARCH_CONFIGS``-th best scale found so far; one that misses there cannot enter the top
        and keeps that scale as an upper bound (``exact=False``), after one prediction instead of ~8.
        """
        if self._tuned is None:
            fleets = [f for f in (self._fleet(hw.with_engine(b)) for hw in self.hardware
                                  for b in self.budgets) if f is not None]
            fleets.sort(key=lambda f: -self._start(f[0]))
            out: list[Candidate] = []
            for replicas, fractions in fleets:
                exact = sorted((c.predicted_scale for c in out if c.exact), reverse=True)
                bar = exact[NUM_SEARCH_CONFIGS - 1] if len(exact) >= NUM_SEARCH_CONFIGS else 0.0
                if bar > 0 and not self._meets(replicas, fractions, bar):
                    out.append(Candidate("homogeneous-tuned", replicas, fractions, bar, exact=False))
                    continue
                out.append(Candidate("homogeneous-tuned", replicas, fractions,
                                     self.predicted_scale(replicas, fractions, start=bar or None)))
            out.sort(key=lambda c: (-c.predicted_scale, not c.exact, c.num_gpus, c.replicas[0].config))
            self._tuned = out
        return self._tuned

    def _meets(self, replicas: tuple[Replica, ...], fractions: np.ndarray, scale: float) -> bool:
        models = [self.model(r.config) for r in replicas]
        return meets_target(fleet_attainment(models, fractions, self.workload, scale), self.workload)

    def _fleet(self, cfg: ReplicaConfig,
               n: int | None = None) -> tuple[tuple[Replica, ...], np.ndarray] | None:
        """``n`` (default: as many as fit) replicas of ``cfg`` packed on the cluster, types spread evenly."""
        n = gpus_by_type(self.cluster).get(cfg.gpu_type, 0) // cfg.num_gpus if n is None else n
        while n > 0 and not fits_cluster({cfg: n}, self.cluster):
            n -= 1
        if n <= 0:
            return None
        packed = pack({cfg: n}, self.cluster)
        if packed is None:
            return None
        return tuple(packed), np.full((self.workload.num_types, n), 1.0 / n)

    def _replicated(self, cfg: ReplicaConfig, kind: str, n: int | None = None) -> Candidate | None:
        fleet = self._fleet(cfg, n)
        if fleet is None:
            return None
        # identical replicas with identical shares: one prediction per scale
        return Candidate(kind, *fleet, self.predicted_scale(*fleet))

    # ---- min-gpus --------------------------------------------------------------------------------

    def min_gpus(self) -> Candidate:
        """The fewest GPUs (a tuned configuration replicated) that meet the target at scale 1."""
        best = None
        budget = gpus_by_type(self.cluster)
        for hw in self.hardware:
            for b in self.budgets:
                cfg = hw.with_engine(b)
                model = self.model(cfg)
                for n in range(1, budget.get(cfg.gpu_type, 0) // cfg.num_gpus + 1):
                    if best is not None and n * cfg.num_gpus > best.num_gpus:
                        break
                    fr = np.full((self.workload.num_types, n), 1.0 / n)
                    att = fleet_attainment([model] * n, fr, self.workload, 1.0)
                    if meets_target(att, self.workload) and fits_cluster({cfg: n}, self.cluster):
                        cand = self._replicated(cfg, "min-gpus", n)
                        if cand is None:
                            break
                        if best is None or (cand.num_gpus, -cand.predicted_scale) < \
                                (best.num_gpus, -best.predicted_scale):
                            best = cand
                        break
        if best is None:
            raise InfeasiblePlanError("no replicated configuration of the cluster meets the SLO "
                                      "attainment target at the trace's rate")
        return best

    # ---- oserve: flow-guided search on SLO capacities ---------------------------------------------

    def searched(self) -> Candidate | None:
        """The flow-guided search over the best tuned configurations with SLO capacities."""
        from oserve.planner.api import build_plan
        from oserve.planner.problem import PlanningProblem
        from oserve.planner.references import homogeneous
        from oserve.planner.search import SearchParams, flow_guided_search

        tuned = self.homogeneous_tuned()
        configs: list[ReplicaConfig] = []
        for c in tuned:
            if c.predicted_scale > 0 and c.replicas[0].config not in configs:
                configs.append(c.replicas[0].config)
            if len(configs) >= NUM_SEARCH_CONFIGS:
                break
        if not configs:
            return None
        start = max(self.workload.rates_rps) or 1.0
        # LP inputs only (the searched plan is then predicted to the full tolerance): 10% is enough
        capacity = np.array([[slo_capacity_rps(self.model(c), t, self.workload, start_rps=start,
                                               rel_tol=SEARCH_CAPACITY_TOL)
                              if self.workload.rates_rps[t] > 0 else 1.0
                              for t in range(self.workload.num_types)] for c in configs])
        problem = PlanningProblem(self.cluster, self.cost, self.stats, config_list=configs,
                                  capacity_matrix=capacity)
        try:
            counts = flow_guided_search(problem, homogeneous(problem), SearchParams())
            plan = build_plan(problem, counts, "oserve", 0.0)
        except InfeasiblePlanError:
            return None
        fractions = np.asarray(plan.dispatch, dtype=float)
        return Candidate("oserve", plan.replicas, fractions, self.predicted_scale(plan.replicas, fractions))

    # ---- disaggregation -----------------------------------------------------------------------------

    @property
    def scorer(self) -> DisaggScorer:
        if self._disagg is None:
            self._disagg = DisaggScorer(self.cluster, self.workload, self.model)
        return self._disagg

    def _node_gpus(self) -> int:
        return max(len(g) for g in self.cluster.nodes.values())

    def _tuned_hardware(self) -> list[ReplicaConfig]:
        return [c.replicas[0].config for c in self.homogeneous_tuned() if c.predicted_scale > 0]

    def _scored(self, kind: str, replicas: tuple[Replica, ...], group_types: set[int]) -> Candidate:
        fr = even_fractions(replicas, self.workload.num_types, group_types)
        return Candidate(kind, replicas, fr, self.predicted_scale(replicas, fr))

    def disaggregated(self) -> list[Candidate]:
        """Group candidates, best predicted first (``planner.disagg_search.search_groups``): for each
        (prefill, decode) pair the best split of the GPUs between the roles and the best engine settings
        of each side; then, for the best pair, groups beside replicas of the best colocated
        configuration, serving the types with the longest prompts or a share of every type."""
        k = self.workload.num_types
        by_prompt = sorted(range(k), key=lambda t: -self.workload.samples[t].mean_input_tokens)
        return search_groups(self.cluster, self._tuned_hardware(), k, by_prompt,
                             lambda kind, reps, fr: Candidate(kind, reps, fr, self.predicted_scale(reps, fr)))

    def dynamo_split(self) -> Candidate | None:
        """Dynamo-style: one configuration at the engine defaults on both sides, the best xPyD split."""
        cands = [self._scored(f"dynamo {name}", reps, set(range(self.workload.num_types)))
                 for prefill, decode in pair_configs(self._tuned_hardware(), self._node_gpus(),
                                                     default_engine=True)
                 for name, reps in layouts(self.cluster, prefill, decode)]
        return max(cands, key=lambda c: c.predicted_scale) if cands else None

    @staticmethod
    def _best_plain_tuned(tuned: list[Candidate]) -> Candidate | None:
        """The best tuned fleet with bf16 weights and KV (None when the best one already is)."""
        for c in tuned:
            cfg = c.replicas[0].config
            if cfg.weight_format == "bf16" and cfg.kv_cache_dtype == "bf16":
                return c if c is not tuned[0] else None
        return None

    def vllm_default(self) -> Candidate | None:
        """The fleet a vLLM user deploys unaided (``planner.references.default``: bf16, PP 1, vLLM's
        engine defaults), with even shares; None when no such fleet fits."""
        from oserve.planner.problem import PlanningProblem
        from oserve.planner.references import default

        plain = [c for c in self.hardware if c.weight_format == "bf16" and c.kv_cache_dtype == "bf16"]
        if not plain:
            return None
        # only the configurations and the cluster matter to ``default``: no capacities to price
        problem = PlanningProblem(self.cluster, self.cost, self.stats, config_list=plain,
                                  capacity_matrix=np.zeros((len(plain), len(self.stats))))
        try:
            counts = default(problem)
        except InfeasiblePlanError:
            return None
        packed = pack({problem.configs[i]: n for i, n in enumerate(counts) if n}, self.cluster)
        if not packed:
            return None
        replicas = tuple(packed)
        fractions = np.full((self.workload.num_types, len(replicas)), 1.0 / len(replicas))
        return Candidate("default", replicas, fractions, self.predicted_scale(replicas, fractions))

    def shortlist(self, size: int = 3) -> list[Candidate]:
        """The best candidates by predicted goodput, the best homogeneous-tuned fleet first (always in:
        the verification's baseline), then the others best predicted first (with disaggregation, the
        best ``NUM_SHORTLIST_GROUPS`` group candidates, each layout family's best and the Dynamo-style
        split besides the colocated ones). Two
        baselines are always in too (beside ``size``), because the latency model can misjudge them and
        the verification must not pick a plan that simulates worse: the fleet a vLLM user deploys
        unaided and, when other number formats are allowed, the best tuned fleet in bf16 alone."""
        tuned = self.homogeneous_tuned()
        if not tuned:
            raise InfeasiblePlanError("no configuration fits the cluster")
        pool = [tuned[0]]
        if self.disaggregation:
            groups = [c for c in self.disaggregated() if c.predicted_scale > 0]
            picked = groups[:NUM_SHORTLIST_GROUPS]
            for family in ("per-node", "cross-node", "pooled"):  # and each layout family's best
                first = next((c for c in groups if c.kind.startswith(f"disaggregated {family}")), None)
                if first is not None and all(first is not c for c in picked):
                    picked.append(first)
            # the Dynamo-style split is in this search space too: verified, so that the plan is never
            # worse than it on the verification trace (as for the homogeneous-tuned fleet)
            dynamo = self.dynamo_split()
            if dynamo is not None and dynamo.predicted_scale > 0 and \
                    all(dynamo.replicas != c.replicas for c in picked):
                picked.append(dynamo)
            pool += picked
            size += len(pool) - 1
        for baseline in (self._best_plain_tuned(tuned), self.vllm_default()):
            if baseline is not None and all(_deployment(baseline) != _deployment(p) for p in pool):
                pool.append(baseline)
                size += 1
        searched = self.searched()
        for c in [searched, *tuned[1:]]:
            if len(pool) >= size:
                break
            # one candidate per deployment (the search may return a tuned fleet with near-even shares)
            if c is not None and all(_deployment(c) != _deployment(p) for p in pool):
                pool.append(c)
        return pool[:1] + sorted(pool[1:], key=lambda c: -c.predicted_scale)


def _deployment(c: Candidate) -> tuple[ReplicaConfig, ...]:
    return tuple(sorted(r.config for r in c.replicas))


def candidate_plan(c: Candidate, cost: CostModel, stats: list[TypeStats], objective: str,
                   planner: str, seconds: float, cluster: str | None = None) -> Plan:
    """A candidate as a Plan; ``capacity_rps`` holds the throughput capacities of the cost model."""
    loads = [TypeLoad(s.mean_input_tokens, s.mean_output_tokens) for s in stats]
    capacity = tuple(tuple(cost.type_capacity_rps(r.config.hardware, ld) for ld in loads)
                     for r in c.replicas)
    rates = np.array([s.rate_rps for s in stats])
    util = [float(sum(rates[t] * c.fractions[t, r] / capacity[r][t]
                      for t in range(len(stats)) if capacity[r][t] > 0))
            for r in range(len(c.replicas))]
    return Plan(cost.model.name, c.replicas, tuple(s.name for s in stats),
                tuple(float(x) for x in rates), capacity,
                tuple(tuple(float(x) for x in row) for row in c.fractions), c.predicted_scale,
                tuple(util), (), planner, seconds, objective, c.predicted_scale, None, cluster)


def plan_for_slo(cluster: ClusterSpec, cost: CostModel, stats: list[TypeStats], workload: SloWorkload,
                 planner: str, objective: str = "goodput", allow_pp: bool = True,
                 weight_formats: tuple[str, ...] = ("bf16",),
                 kv_formats: tuple[str, ...] = ("bf16",),
                 disaggregation: bool = False) -> tuple[Plan, list[Plan]]:
    """(the best plan by predicted goodput, the shortlist as plans, the best homogeneous-tuned fleet
    first) for ``oserve`` (its search space with disaggregated groups when ``disaggregation``); for the
    reference planners their own deployment, scored by the latency model."""
    if objective not in OBJECTIVES or objective == "throughput":
        raise ConfigError(f"plan_for_slo: objective must be goodput or min-gpus, got '{objective}'")
    t0 = time.perf_counter()
    gp = GoodputPlanner(cluster, cost, stats, workload, allow_pp, weight_formats=weight_formats,
                        kv_formats=kv_formats, disaggregation=disaggregation and planner == "oserve")
    where = cluster.describe()
    if objective == "min-gpus":
        best = gp.min_gpus()
        plan = candidate_plan(best, cost, stats, objective, planner, time.perf_counter() - t0, where)
        return plan, [plan]
    if planner == "homogeneous-tuned":
        cands = gp.homogeneous_tuned()[:1]
    elif planner == "oserve":
        cands = gp.shortlist()
    else:
        raise ConfigError(f"planner '{planner}' has no goodput objective (use oserve or homogeneous-tuned)")
    seconds = time.perf_counter() - t0
    plans = [candidate_plan(c, cost, stats, objective, planner, seconds, where) for c in cands]
    top = max(range(len(plans)), key=lambda i: (cands[i].predicted_scale, -i))
    return plans[top], plans


def score_plan(plan: Plan, cost: CostModel, stats: list[TypeStats], workload: SloWorkload,
               cluster: ClusterSpec) -> Plan:
    """A plan of any planner with its predicted goodput scale filled in."""
    gp = GoodputPlanner(cluster, cost, stats, workload)
    fractions = np.asarray(plan.dispatch, dtype=float)
    return replace(plan, predicted_goodput_scale=gp.predicted_scale(plan.replicas, fractions))


__all__ = ["ENGINE_BUDGETS", "OBJECTIVES", "Candidate", "GoodputPlanner", "candidate_plan",
           "plan_for_slo", "score_plan", "slo_workload"]
