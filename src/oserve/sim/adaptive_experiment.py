"""Comparing static deployments with switching ones on a workload whose mix or volume drifts, under an SLO.

Every plan here is an SLO plan (``planner.slo_planner``) and every loop prices its switches in SLO goodput
(``switching.policy``). Modes:

* ``static-initial``: the goodput plan for the first ``warmup_s``, kept for the whole run (planning once
  from recent traffic); ``static-oserve``: the goodput plan for the whole trace's mean per-type rates
  (hindsight a real static deployment would not have); ``static-homogeneous``: the best
  homogeneous-tuned fleet for the whole trace (hindsight too);
* ``switch-reload`` / ``switch-p2p``: start from the ``static-initial`` plan and run the closed loop
  (forecast, goodput-priced policy, switches), weights reloaded from storage or moved GPU to GPU;
* ablations ``blind-reload`` / ``blind-p2p`` (switch whenever the planner's best differs: no pricing, no
  hysteresis, no gap) and ``gated-reload`` / ``gated-p2p`` (the server's default: the drift gate first);
* ``elastic``: the loop under the ``min-gpus`` objective (peer-to-peer): the fleet is sized to the
  forecast, GPUs not in the plan are released; ``static-peak``: the fewest GPUs that meet the target
  at the busiest control window's rates, kept for the whole run (the static fleet sized for the peak).

``mode_goodput`` finds a mode's SLO goodput: the highest rate scale of a time-preserving replay of the
trace (``workload.drift.replay_at_rate``: more requests per window, the same phases) at which every type
reaches the attainment target.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.slo_capacity import SloWorkload
from oserve.forecast.baselines import EWMA, LastValue, MovingAverage
from oserve.planner.plan import Plan
from oserve.planner.slo_planner import plan_for_slo, slo_workload
from oserve.sim.adaptive import AdaptiveResult, AdaptiveSimulation
from oserve.sim.api import batching_config, request_type_ids, simulate_plan
from oserve.sim.config import SimConfig
from oserve.sim.experiment import PreparedTrace
from oserve.sim.goodput import GoodputResult, search_goodput_scale
from oserve.sim.metrics import Attainment, SimResult, per_type_latency, slo_attainment
from oserve.switching.goodput_price import forecast_workload
from oserve.switching.io_profile import IoProfile
from oserve.switching.links import LinkModel
from oserve.switching.policy import SwitchContext, SwitchParams, forecast_types
from oserve.switching.replan_gate import ReplanConfig
from oserve.workload.drift import replay_at_rate
from oserve.workload.rate_window import window_rates
from oserve.workload.slo import SLO_PRESETS, SloSpec

MODES = ("static-homogeneous", "static-oserve", "static-initial", "switch-reload", "switch-p2p")
# blind: switch whenever the re-plan differs (no gain test, no gap); gated: the server's default
# (`--switch-policy reactive`): the drift gate (switching.replan_gate) before the policy, its cooldown the gap
ABLATIONS = ("blind-reload", "blind-p2p", "gated-reload", "gated-p2p", "elastic", "static-peak")
FORECASTERS = {"last": LastValue(), "moving-avg": MovingAverage(3), "ewma": EWMA(alphas=(0.5,))}


@dataclass(frozen=True)
class AdaptiveSetup:
    cluster: ClusterSpec
    cost: CostModel
    prepared: PreparedTrace  # already scaled to the rates to simulate
    sim_config: SimConfig = SimConfig()
    switch: SwitchParams = SwitchParams()
    control_interval_s: float = 60.0
    warmup_s: float = 300.0
    forecaster: object = "ewma"  # a name from FORECASTERS, or a fitted Forecaster (e.g. a loaded LSTM)
    io: IoProfile = IoProfile()
    redispatch: bool = True  # on hold, re-weight dispatch for the forecast (False: keep the plan's)
    slo: SloSpec = field(default_factory=lambda: SloSpec(SLO_PRESETS["loose"], source="preset 'loose'"))


def slo_of(setup: AdaptiveSetup) -> SloWorkload:
    """The SLO workload of the trace (lengths, SLOs, burstiness); the loop replaces its rates."""
    p = setup.prepared
    return slo_workload(p.trace, p.types, p.stats, setup.slo)


def _plan(setup: AdaptiveSetup, rates_rps, objective: str = "goodput", planner: str = "oserve",
          headroom: float = 1.0) -> Plan:
    p = setup.prepared
    types = forecast_types(p.stats, np.asarray(rates_rps) * headroom)
    plan, _ = plan_for_slo(setup.cluster, setup.cost, types, forecast_workload(slo_of(setup), types), planner,
                           objective)
    return plan


def _warm_rates(setup: AdaptiveSetup) -> np.ndarray:
    p = setup.prepared
    warm = p.types.stats(p.trace.window(0.0, setup.warmup_s))
    return np.array([t.count / setup.warmup_s for t in warm])


def peak_rates(setup: AdaptiveSetup) -> np.ndarray:
    """Per-type rates of the control window with the most arrivals (what a peak-sized fleet plans for)."""
    p = setup.prepared
    types = request_type_ids(p.trace, p.types, setup.sim_config.oracle_types)
    ends = np.arange(setup.control_interval_s, float(p.trace.arrival_s[-1]) + setup.control_interval_s,
                     setup.control_interval_s)
    windows = [window_rates(p.trace.arrival_s, types, p.types.k, e, setup.control_interval_s) for e in ends]
    return max(windows, key=lambda w: float(w.sum()))


def initial_plan(setup: AdaptiveSetup, objective: str = "goodput") -> Plan:
    """The SLO plan for the per-type rates of the first ``warmup_s`` (padded by the elastic headroom under
    ``min-gpus``)."""
    headroom = setup.switch.elastic_headroom if objective == "min-gpus" else 1.0
    return _plan(setup, _warm_rates(setup), objective, headroom=headroom)


def static_plan(setup: AdaptiveSetup, kind: str) -> Plan:
    p = setup.prepared
    if kind == "initial":
        return initial_plan(setup)
    if kind == "peak":
        return _plan(setup, peak_rates(setup), "min-gpus", headroom=setup.switch.elastic_headroom)
    mean = [s.rate_rps for s in p.stats]
    return _plan(setup, mean, planner="homogeneous-tuned" if kind == "homogeneous" else "oserve")


def run_static(setup: AdaptiveSetup, kind: str) -> tuple[Plan, SimResult]:
    plan = static_plan(setup, kind)
    p = setup.prepared
    return plan, simulate_plan(plan, p.trace, p.types, setup.cost, setup.sim_config)


def run_adaptive(setup: AdaptiveSetup, transfer_mode: str, blind: bool = False,
                 gate: ReplanConfig | None = None, objective: str = "goodput") -> tuple[Plan, AdaptiveResult]:
    p = setup.prepared
    initial = initial_plan(setup, objective)
    ctx = SwitchContext(setup.cluster, setup.cost, tuple(p.stats), LinkModel(setup.cluster, setup.io),
                        slo=slo_of(setup))
    params = replace(setup.switch, transfer_mode=transfer_mode, objective=objective)
    if blind:
        params = replace(params, min_gap_s=0.0, hysteresis=0.0, blind=True)
    forecaster = FORECASTERS[setup.forecaster] if isinstance(setup.forecaster, str) else setup.forecaster
    sim = AdaptiveSimulation(ctx, params, initial, forecaster, setup.sim_config,
                             batching_config(setup.cost, setup.sim_config), setup.control_interval_s,
                             redispatch=setup.redispatch, gate=gate)
    types = request_type_ids(p.trace, p.types, setup.sim_config.oracle_types)
    result = sim.run(p.trace.arrival_s, p.trace.input_tokens, p.trace.output_tokens, types)
    return initial, result


def run_mode(setup: AdaptiveSetup, mode: str) -> dict:
    """One mode on the setup's trace: its result, deployment, switches, time switching, GPU-hours."""
    span_h = float(setup.prepared.trace.arrival_s[-1]) / 3600.0
    if mode.startswith("static-"):
        plan, res = run_static(setup, mode.split("-", 1)[1])
        return {"result": res, "deployment": plan.describe(), "num_switches": 0, "switching_s": 0.0,
                "gpu_hours": plan.num_gpus * span_h, "num_gpus_initial": plan.num_gpus}
    if mode == "elastic":
        kind, transfer, objective = "switch", "p2p", "min-gpus"
    else:
        (kind, transfer), objective = mode.split("-", 1), setup.switch.objective
    gate = ReplanConfig(cooldown_s=setup.switch.min_gap_s) if kind == "gated" else None
    initial, ares = run_adaptive(setup, transfer, blind=kind == "blind", gate=gate, objective=objective)
    return {"result": ares.sim, "deployment": initial.describe(), "num_switches": ares.num_switches,
            "switching_s": ares.switching_s, "gpu_hours": ares.gpu_seconds / 3600.0,
            "num_gpus_initial": initial.num_gpus, "migrated": ares.migrated, "requeued": ares.requeued,
            "rerouted": ares.rerouted, "timeline": ares.timeline}


def attainment_of(setup: AdaptiveSetup, res: SimResult) -> Attainment:
    names = setup.prepared.types.names()
    ttft, tpot = setup.slo.bounds(res.type_id, names, res.input_tokens)
    return slo_attainment(res, ttft, tpot, len(names))


def compare(setup: AdaptiveSetup, modes=MODES, slo_ttft_s=None, slo_tpot_s=None) -> dict:
    out: dict = {}
    for mode in modes:
        r = run_mode(setup, mode)
        r["summary"] = r["result"].summary(slo_ttft_s, slo_tpot_s)
        r["attainment"] = attainment_of(setup, r["result"]).to_dict()
        out[mode] = r
    return out


def rate_replayed(setup: AdaptiveSetup, scale: float) -> AdaptiveSetup:
    """The setup on its trace replayed at ``scale`` x the rate over the same time (types kept)."""
    p = setup.prepared
    trace = p.trace if scale == 1.0 else replay_at_rate(p.trace, scale, seed=setup.sim_config.seed)
    return replace(setup, prepared=PreparedTrace(trace, p.types, p.types.stats(trace), p.num_clipped))


def mode_goodput(setup: AdaptiveSetup, mode: str, start_scale: float = 1.0,
                 rel_tol: float = 0.1, max_probes: int = 8) -> tuple[GoodputResult, dict]:
    """(the goodput search of ``mode``, the run at its goodput scale with per-type P99s)."""
    runs: dict[float, dict] = {}

    def evaluate(scale: float) -> tuple[Attainment, SimResult]:
        scaled = rate_replayed(setup, scale)
        r = run_mode(scaled, mode)
        runs[scale] = r
        return attainment_of(scaled, r["result"]), r["result"]

    res = search_goodput_scale(evaluate, setup.slo.attainment, start_scale, rel_tol, max_probes=max_probes)
    best = runs.get(res.scale, {})
    if best:
        best = {k: v for k, v in best.items() if k not in ("result", "timeline")} | {
            "per_type_p99": per_type_latency(best["result"], setup.prepared.types.k),
            "timeline": best.get("timeline")}
    return res, best
