"""Comparing static deployments with switching ones on a workload whose mix shifts.

Modes: ``static-homogeneous`` and ``static-oserve`` plan once for the whole trace's mean per-type rates
(hindsight a real static deployment would not have); ``static-initial`` keeps the plan for the first
``warmup_s`` for the whole run (what planning once from recent traffic gives); ``switch-reload`` and
``switch-p2p`` start from a plan for the first ``warmup_s`` and run the closed loop (forecast, switching
policy, switches) with weights reloaded from storage or moved peer-to-peer. Ablations ``blind-reload``
and ``blind-p2p`` switch whenever the re-plan differs from the current deployment (no gain-versus-cost
test, no hysteresis, no minimum gap, no preference for nearby deployments).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.forecast.baselines import EWMA, LastValue, MovingAverage
from oserve.planner.api import make_plan
from oserve.sim.adaptive import AdaptiveResult, AdaptiveSimulation
from oserve.sim.api import batching_config, request_type_ids, simulate_plan
from oserve.sim.config import SimConfig
from oserve.sim.experiment import PreparedTrace
from oserve.switching.io_profile import IoProfile
from oserve.switching.links import LinkModel
from oserve.switching.policy import SwitchContext, SwitchParams
from oserve.switching.replan_gate import ReplanConfig

MODES = ("static-homogeneous", "static-oserve", "static-initial", "switch-reload", "switch-p2p")
# blind: switch whenever the re-plan differs (no gain test, no gap); gated: the server's default
# (`--switch-policy reactive`): the drift gate (switching.replan_gate) before the policy, its cooldown the gap
ABLATIONS = ("blind-reload", "blind-p2p", "gated-reload", "gated-p2p")
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


def run_static(setup: AdaptiveSetup, planner: str):
    p = setup.prepared
    if planner == "initial":
        plan = initial_plan(setup)
    else:
        plan = make_plan(setup.cluster, setup.cost.model, p.stats, planner, setup.cost)
    return plan, simulate_plan(plan, p.trace, p.types, setup.cost, setup.sim_config)


def initial_plan(setup: AdaptiveSetup):
    """The plan for the per-type rates of the first ``warmup_s``."""
    p = setup.prepared
    warm = p.types.stats(p.trace.window(0.0, setup.warmup_s))
    warm = [replace(t, rate_rps=t.count / setup.warmup_s) for t in warm]
    return make_plan(setup.cluster, setup.cost.model, warm, "oserve", setup.cost)


def run_adaptive(setup: AdaptiveSetup, transfer_mode: str, blind: bool = False,
                 gate: ReplanConfig | None = None) -> tuple:
    p = setup.prepared
    initial = initial_plan(setup)
    ctx = SwitchContext(setup.cluster, setup.cost, tuple(p.stats), LinkModel(setup.cluster, setup.io))
    params = replace(setup.switch, transfer_mode=transfer_mode)
    if blind:
        params = replace(params, min_gap_s=0.0, hysteresis=0.0, blind=True)
    forecaster = FORECASTERS[setup.forecaster] if isinstance(setup.forecaster, str) else setup.forecaster
    sim = AdaptiveSimulation(ctx, params, initial, forecaster, setup.sim_config,
                             batching_config(setup.cost, setup.sim_config), setup.control_interval_s,
                             redispatch=setup.redispatch, gate=gate)
    types = request_type_ids(p.trace, p.types, setup.sim_config.oracle_types)
    result: AdaptiveResult = sim.run(p.trace.arrival_s, p.trace.input_tokens, p.trace.output_tokens,
                                     types)
    return initial, result


def compare(setup: AdaptiveSetup, modes=MODES, slo_ttft_s=None, slo_tpot_s=None) -> dict:
    out: dict = {}
    for mode in modes:
        if mode.startswith("static-"):
            plan, res = run_static(setup, mode.split("-", 1)[1])
            out[mode] = {"summary": res.summary(slo_ttft_s, slo_tpot_s), "deployment": plan.describe(),
                         "num_switches": 0, "result": res}
        else:
            kind, transfer = mode.split("-", 1)
            gate = ReplanConfig(cooldown_s=setup.switch.min_gap_s) if kind == "gated" else None
            initial, ares = run_adaptive(setup, transfer, blind=kind == "blind", gate=gate)
            out[mode] = {"summary": ares.sim.summary(slo_ttft_s, slo_tpot_s),
                         "deployment": initial.describe(), "num_switches": ares.num_switches,
                         "migrated": ares.migrated, "requeued": ares.requeued,
                         "rerouted": ares.rerouted, "timeline": ares.timeline, "result": ares.sim}
    return out
