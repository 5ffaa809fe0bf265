"""Simulating the closed loop: forecast, switching policy and deployment switches on virtual time.

Every ``control_interval_s`` the controller measures each type's arrival rate over the past interval,
forecasts the next one and runs the control step the server runs (``oserve.switching.control_step``:
the cost-aware ``decide``, behind the drift gate when one is given) to choose what to run.
On a switch, replicas that stop take no new requests (their queued requests are re-routed), short
requests drain, long ones hand their KV cache over to a replica that keeps serving (after the planned KV
transfer time; re-queued for recompute when nobody has room), and at the drain deadline whatever is left
is handed over too. The new replicas join after the switch duration the policy priced (drain, weight
transfer, restart); until then the replicas that stay serve everything with the target's dispatch (when
none stays, the gateway holds arriving requests until the join).

This is a controller on the simulator's one event loop (``simulator.Simulation``): its control, join,
drain-deadline and KV-adoption events are queued with the step ends, and it acts only through the
simulator's and the replicas' public operations. With no switch and no re-dispatch the run is the static
simulation of the initial plan, request by request (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import Plan, Replica
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.metrics import SimResult
from oserve.sim.simulator import Simulation, replicas_from_configs
from oserve.sim.step_timer import CostModelStepTimer
from oserve.switching.control import ControlPolicy, control_step
from oserve.switching.kv_migration import Destination, InflightRequest, KvMigrationParams, plan_kv_migration
from oserve.switching.policy import SwitchContext, SwitchParams
from oserve.switching.replan_gate import ReplanConfig
from oserve.switching.switch_schedule import SwitchSchedule, finishes_in_drain, gpu_successors
from oserve.workload.rate_window import window_rates
from oserve.workload.slo import Slo

CONTROL, JOIN, DEADLINE, ADOPT = range(1, 5)  # event kinds, after the simulator's STEP (0)
DISPATCH_ATOL = 1e-9  # shares closer than this to the running table's are the same table


def _gpus_of(label: str, replicas) -> int:
    return next(r.config.num_gpus for r in replicas if r.config.label() == label)


@dataclass(frozen=True)
class ControlRecord:
    """One control interval: what was seen, forecast and decided."""

    time_s: float
    observed_rps: tuple[float, ...]
    forecast_rps: tuple[float, ...]
    deployment: str
    num_gpus_by_config: dict
    switched: bool
    reason: str
    switch_s: float = 0.0
    decide_seconds: float = 0.0


@dataclass
class AdaptiveResult:
    sim: SimResult
    timeline: list[ControlRecord] = field(default_factory=list)
    num_switches: int = 0
    migrated: int = 0
    requeued: int = 0
    rerouted: int = 0
    gpu_seconds: float = 0.0  # GPUs held over the arrivals' span (during a switch: old and new)
    switching_s: float = 0.0  # time spent in switches (start to join)
    # (time, "free" | "load", GPUs): a stopping replica handed over its last sequence and freed its GPUs,
    # a started replica began to load onto its GPUs; on shared GPUs "free" comes first (tested)
    events: list[tuple[float, str, tuple[int, ...]]] = field(default_factory=list)


class AdaptiveSimulation:
    """``AdaptiveSimulation(...).run(arrival_s, input_tokens, output_tokens, type_id)``: the switching
    controller of one run (the simulator's ``Controller``)."""

    def __init__(self, ctx: SwitchContext, params: SwitchParams, initial: Plan, forecaster,
                 config: SimConfig, batching: BatchingConfig, control_interval_s: float = 60.0,
                 kv_params: KvMigrationParams | None = None, redispatch: bool = True,
                 gate: ReplanConfig | None = None, type_slos: tuple[Slo, ...] | None = None) -> None:
        if control_interval_s <= 0:
            raise ConfigError("control interval must be positive")
        if initial.is_disaggregated:
            # the switching loop plans, prices and executes colocated deployments only: run as is, the
            # groups' prefill and decode roles would be dropped and every replica would serve alone
            raise ConfigError(f"simulate-adaptive with the disaggregated plan {initial.describe()}: the "
                              "switching loop handles colocated plans only; simulate it statically "
                              "(oserve simulate --plan)")
        self.ctx, self.params, self.config = ctx, params, config
        self.type_slos = type_slos  # what the slo-spill dispatch reads
        # the server's control step: the drift gate (when given) before ``decide``
        self.control = ControlPolicy(ctx, params, gate=gate, redispatch=redispatch)
        self.num_drifted_checks = 0
        self.planned_rps = tuple(initial.type_rates_rps)  # what the running plan was made for
        self.cost: CostModel = ctx.cost
        self.forecaster = forecaster
        self.batching = batching
        self.initial = initial
        self.interval_s = control_interval_s
        self.redispatch = redispatch  # on hold, re-weight the current replicas for the forecast mix
        # (it lowered P99 on a swinging synthetic day and raised it on conv->code phases: docs/switching.md)
        self.kv_params = kv_params or KvMigrationParams(drain_budget_s=params.drain_s)
        self.kv_bytes_per_token = (self.cost.model.num_layers
                                   * self.cost.model.kv_bytes_per_token_layer())
        self.timers: dict[ReplicaConfig, CostModelStepTimer] = {}
        self.current: tuple[Replica, ...] = initial.replicas
        self.plan_to_global: list[int] = list(range(len(initial.replicas)))
        self._gpus_of_global = {g: tuple(r.gpus) for g, r in enumerate(initial.replicas)}
        self._past_deadline: set[int] = set()  # stopped replicas past their drain deadline, not yet empty
        self.last_switch_s: float | None = None
        self.switching = False
        self.result = AdaptiveResult(None)  # type: ignore[arg-type]
        self._held_gpus = {g for r in initial.replicas for g in r.gpus}
        self._held_since_s = 0.0
        self._dispatch: np.ndarray | None = np.asarray(initial.dispatch, dtype=float)  # what routes now

    def run(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
            type_id: np.ndarray) -> AdaptiveResult:
        setups = replicas_from_configs(self.initial.configs(), self.cost, self.timers)
        max_context = (self.cost.model.max_context_tokens if self.config.context_policy == "drop"
                       else None)
        sim = Simulation(setups, DispatchTable.from_fractions(self.initial.dispatch), self.config,
                         self.batching, self.cost.params.kv_block_tokens, max_context,
                         type_slos=self.type_slos)
        self.result.sim = sim.run(arrival_s, input_tokens, output_tokens, type_id, controller=self)
        self._hold_gpus(float(arrival_s[-1]) if len(arrival_s) else 0.0, self._held_gpus)
        return self.result

    def _hold_gpus(self, t: float, gpus: set[int]) -> None:
        """Account the GPUs held since the last change up to ``t`` (capped at the last arrival)."""
        end = min(t, float(self._last_arrival_s))
        self.result.gpu_seconds += len(self._held_gpus) * max(0.0, end - self._held_since_s)
        self._held_gpus, self._held_since_s = set(gpus), max(self._held_since_s, end)

    # ---- the simulator's callbacks ---------------------------------------------------------------------

    def start(self, sim: Simulation) -> None:
        self._last_arrival_s = sim.records.last_arrival_s
        self.num_types = len(self.ctx.type_template)
        self.history: list[np.ndarray] = []
        self._schedule_control(sim, self.interval_s)

    def _schedule_control(self, sim: Simulation, t: float) -> None:
        # control stops with the arrivals: a control event at t runs only if a request arrives after t
        if t < sim.records.last_arrival_s:
            sim.schedule(t, CONTROL)

    def on_event(self, sim: Simulation, t: float, kind: int, a, b) -> None:
        if kind == CONTROL:
            self._control(sim, t)
            self._schedule_control(sim, t + self.interval_s)
        elif kind == JOIN:
            self._join(sim, t, *a)
        elif kind == DEADLINE:
            rep = sim.replicas[a]
            self._past_deadline.add(a)
            sim.push_step(a, rep.extract([s.req_id for s in rep.running], t))
            self.on_extracted(sim, a, t)
        elif kind == ADOPT:
            sim.adopt(b, a, t)

    def on_extracted(self, sim: Simulation, replica_id: int, t: float) -> None:
        """Send the sequences a stopping replica released to replicas that keep serving."""
        src = sim.replicas[replica_id]
        seqs = src.take_extracted()
        if replica_id in self._past_deadline and not src.running:
            # the last sequence has left (at the step boundary after the deadline): its GPUs are free
            self._past_deadline.discard(replica_id)
            self.result.events.append((t, "free", self._gpus_of_global[replica_id]))
        if not seqs:
            return
        bt = self.cost.params.kv_block_tokens
        dests = [Destination(g, sim.replicas[g].pool.num_free * bt, sim.replicas[g].pool.num_blocks * bt)
                 for g in sim.router.replica_ids]
        inflight = [InflightRequest(s.req_id, replica_id, s.num_cached, s.remaining_output)
                    for s in seqs]
        params = KvMigrationParams(0.0, self.kv_params.tpot_s, self.kv_params.headroom_frac,
                                   self.kv_params.link_bytes_s)
        plan = plan_kv_migration(inflight, dests, self.kv_bytes_per_token, params)
        by_id = {s.req_id: s for s in seqs}
        for m in plan.migrations:
            self.result.migrated += 1
            sim.schedule(t + m.num_bytes / params.link_bytes_s, ADOPT, by_id[m.req_id], m.dst_replica)
        for rid in plan.requeue + plan.drain:
            seq = by_id[rid]
            src.release_for_recompute(seq)
            self.result.requeued += 1
            sim.admit(seq, t)

    # ---- control and switching -------------------------------------------------------------------

    def _observed(self, sim: Simulation, t: float) -> np.ndarray:
        rec = sim.records
        return window_rates(rec.arrival_s, rec.type_id, self.num_types, t, self.interval_s)

    def _control(self, sim: Simulation, t: float) -> None:
        observed = self._observed(sim, t)
        self.history.append(observed)
        forecast = np.maximum(self.forecaster.predict(np.asarray(self.history)), 0.0)
        if self.switching:
            self._record(t, observed, forecast, False, "switch in progress")
            return
        step = control_step(self.control, self.current, self.planned_rps, forecast, self.last_switch_s, t,
                            self.num_drifted_checks)
        self.num_drifted_checks, d = step.num_drifted_checks, step.decision
        if d.switch and d.plan is not None:
            self._start_switch(sim, t, d)
            self.planned_rps = tuple(d.plan.type_rates_rps)
        elif d.plan is not None and self.redispatch:
            self._redispatch(sim, d.plan.dispatch)
            self.planned_rps = tuple(d.plan.type_rates_rps)
        self._record(t, observed, forecast, d.switch, d.reason, d.switch_s, d.decide_seconds)

    def _redispatch(self, sim: Simulation, dispatch) -> None:
        """Re-weight the running replicas; an unchanged table leaves the router as it is. Installing a table
        resets its round-robin credits, and so every tie-break after it: with identical replicas and even
        shares each hold used to do that, and the run drifted from the static one it is (on the 4+4-minute
        conv->code trace its attainment fell from 0.925 to 0.896 at one probe, docs/switching.md)."""
        new = np.asarray(dispatch, dtype=float)
        if self._dispatch is not None and new.shape == self._dispatch.shape and \
                np.allclose(new, self._dispatch, rtol=0.0, atol=DISPATCH_ATOL):
            return
        self._set_dispatch(sim, dispatch, self.plan_to_global)

    def _set_dispatch(self, sim: Simulation, dispatch, order: list[int]) -> None:
        sim.set_dispatch(dispatch, order)
        self._dispatch = np.asarray(dispatch, dtype=float)

    def _record(self, t, observed, forecast, switched, reason, switch_s=0.0, secs=0.0) -> None:
        gpus: dict[str, int] = {}
        for r in self.current:
            gpus[r.config.label()] = gpus.get(r.config.label(), 0) + r.config.num_gpus
        desc = " + ".join(f"{n // _gpus_of(label, self.current)}x[{label}]"
                          for label, n in sorted(gpus.items()))
        self.result.timeline.append(ControlRecord(t, tuple(map(float, observed)),
                                                  tuple(map(float, forecast)), desc, gpus, switched,
                                                  reason, switch_s, secs))

    def _start_switch(self, sim: Simulation, t: float, d) -> None:
        tr = d.transition
        schedule = d.schedule or SwitchSchedule(self.params.drain_s, max(d.switch_s, self.params.drain_s),
                                                gpu_successors(tr))
        kept_new_to_global = {new: self.plan_to_global[old] for old, new in tr.kept}
        kept_globals = set(kept_new_to_global.values())
        stopped = [g for g in self.plan_to_global if g not in kept_globals]
        self.switching, self.last_switch_s = True, t
        self.result.num_switches += 1
        self.result.switching_s += d.switch_s
        self._hold_gpus(t, self._held_gpus | {g for r in d.plan.replicas for g in r.gpus})
        requeue = []
        for g in stopped:
            requeue += sim.replicas[g].stop_admitting()
        order = [kept_new_to_global.get(r.replica_id, -1) for r in d.plan.replicas]
        sim.set_dispatch(d.plan.dispatch, order)  # only kept replicas accept until the join
        self._dispatch = None  # the table routes over the kept replicas only: any re-dispatch installs
        for seq in requeue:
            self.result.rerouted += 1
            sim.admit(seq, t)
        for g in stopped:
            rep = sim.replicas[g]
            long = [s.req_id for s in rep.running
                    if not finishes_in_drain(s.remaining_output, self.kv_params.tpot_s, self.params.drain_s)]
            if long:
                sim.push_step(g, rep.extract(long, t))
            self.on_extracted(sim, g, t)
            sim.schedule(t + schedule.drain_deadline_s, DEADLINE, g)
        # a started replica on a stopping one's GPUs loads from the drain deadline on (switch_schedule)
        for r in d.plan.replicas:
            if r.replica_id not in kept_new_to_global:
                self.result.events.append((t + schedule.load_start_s(r.replica_id), "load",
                                           tuple(r.gpus)))
        sim.schedule(t + schedule.ready_s, JOIN, (d.plan, kept_new_to_global))

    def _join(self, sim: Simulation, t: float, plan: Plan, kept_new_to_global: dict) -> None:
        globals_ = []
        for r in plan.replicas:
            g = kept_new_to_global.get(r.replica_id)
            if g is None:
                (setup,) = replicas_from_configs([r.config], self.cost, self.timers)
                g = sim.add_replica(setup)
                self._gpus_of_global[g] = tuple(r.gpus)
            globals_.append(g)
        self.current = plan.replicas
        self._hold_gpus(t, {g for r in plan.replicas for g in r.gpus})
        self.plan_to_global = globals_
        self._set_dispatch(sim, plan.dispatch, globals_)
        self.switching = False
        sim.release_pending(t)
