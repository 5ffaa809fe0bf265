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
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.planner.dispatch_policy import DispatchState, DispatchTable, choose_replica
from oserve.planner.plan import Plan, Replica
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.metrics import ReplicaStats, SimResult
from oserve.sim.request import Seq
from oserve.sim.simulator import replicas_from_configs
from oserve.sim.switchable_replica import SwitchableReplica, preempt_free
from oserve.switching.control import ControlPolicy, control_step
from oserve.switching.kv_migration import Destination, InflightRequest, KvMigrationParams, plan_kv_migration
from oserve.switching.policy import SwitchContext, SwitchParams
from oserve.switching.replan_gate import ReplanConfig
from oserve.workload.rate_window import window_rates

STEP, CONTROL, JOIN, DEADLINE, ADOPT = range(5)


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


class AdaptiveSimulation:
    """``AdaptiveSimulation(...).run(arrival_s, input_tokens, output_tokens, type_id)``."""

    def __init__(self, ctx: SwitchContext, params: SwitchParams, initial: Plan, forecaster,
                 config: SimConfig, batching: BatchingConfig, control_interval_s: float = 60.0,
                 kv_params: KvMigrationParams | None = None, redispatch: bool = True,
                 gate: ReplanConfig | None = None) -> None:
        if control_interval_s <= 0:
            raise ConfigError("control interval must be positive")
        self.ctx, self.params, self.config = ctx, params, config
        # the server's control step: the drift gate (when given) before ``decide``
        self.control = ControlPolicy(ctx, params, gate=gate, redispatch=redispatch)
        self.num_drifted_checks = 0
        self.planned_rps = tuple(initial.type_rates_rps)  # what the running plan was made for
        self.cost: CostModel = ctx.cost
        self.forecaster = forecaster
        self.batching = batching
        self.interval_s = control_interval_s
        self.redispatch = redispatch  # on hold, re-weight the current replicas for the forecast mix
        # (it lowered P99 on a swinging synthetic day and raised it on conv->code phases: docs/switching.md)
        self.kv_params = kv_params or KvMigrationParams(drain_budget_s=params.drain_s)
        self.kv_bytes_per_token = (self.cost.model.num_layers
                                   * self.cost.model.kv_bytes_per_token_layer())
        self.rng = np.random.default_rng(config.seed)
        self.reps: list[SwitchableReplica] = []
        self.labels: list[str] = []
        self.current: tuple[Replica, ...] = ()
        self.plan_to_global: list[int] = []
        self._set_deployment(initial, [self._new_replica(r) for r in initial.replicas])
        self.last_switch_s: float | None = None
        self.switching = False
        self.pending: list[Seq] = []
        self.result = AdaptiveResult(None)  # type: ignore[arg-type]

    # ---- deployment state ------------------------------------------------------------------------

    def _new_replica(self, r: Replica) -> int:
        (setup,) = replicas_from_configs([r.config], self.cost)
        bt = self.cost.params.kv_block_tokens
        rep = SwitchableReplica(len(self.reps), setup.timer, BlockPool(setup.kv_blocks, bt),
                                BatchingConfig(self.batching.mode, self.batching.max_num_seqs,
                                               self.batching.max_num_batched_tokens,
                                               int(self.config.watermark_frac * setup.kv_blocks)),
                                self.config.util_bin_s)
        self.reps.append(rep)
        self.labels.append(r.config.label())
        return rep.replica_id

    def _set_deployment(self, plan: Plan, globals_: list[int]) -> None:
        self.current = plan.replicas
        self.plan_to_global = list(globals_)
        self._set_dispatch(plan.dispatch, globals_)

    def _set_dispatch(self, dispatch, globals_: list[int]) -> None:
        self.active = [g for g in globals_ if self.reps[g].accepting]
        cols = [globals_.index(g) for g in self.active]
        self.table = DispatchTable(tuple(tuple(row[c] for c in cols) for row in dispatch))
        self.dstate = DispatchState.initial(self.table)

    def _route(self, seq: Seq) -> int:
        outstanding = [self.reps[g].num_outstanding for g in self.active]
        idx, self.dstate = choose_replica(self.table, self.dstate, seq.type_id, outstanding,
                                          self.config.dispatch, self.rng)
        gid = self.active[idx]
        need = seq.max_tokens()
        if need > self.reps[gid].pool.num_blocks * self.reps[gid].pool.block_tokens:
            fits = [g for g in self.active
                    if self.reps[g].pool.num_blocks * self.reps[g].pool.block_tokens >= need]
            if fits:
                gid = min(fits, key=lambda g: (self.reps[g].num_outstanding, g))
        return gid

    # ---- the event loop --------------------------------------------------------------------------

    def run(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
            type_id: np.ndarray) -> AdaptiveResult:
        wall0 = time.perf_counter()
        n = len(arrival_s)
        self.arrivals = [float(x) for x in arrival_s]
        ins, outs, types = ([int(x) for x in a] for a in (input_tokens, output_tokens, type_id))
        self.first_tok, self.finish = np.full(n, np.nan), np.full(n, np.nan)
        self.where = np.full(n, -1, dtype=np.int64)
        self.seqs: list[Seq | None] = [None] * n
        self.dropped = np.array([""] * n, dtype=object)
        self.types = np.asarray(type_id, dtype=np.int64)
        self.num_types = len(self.ctx.type_template)
        self.history: list[np.ndarray] = []
        self.heap: list = []
        self.counter = 0
        horizon = (self.arrivals[-1] if n else 0.0) + self.config.drain_s
        self._push(self.interval_s, CONTROL, None, None)
        i, last_t = 0, 0.0
        while True:
            next_arrival = self.arrivals[i] if i < n else math.inf
            if self.heap and self.heap[0][0] < next_arrival:
                t, kind, _, a, b = heapq.heappop(self.heap)
                if t > horizon:
                    break
                if kind == CONTROL and i >= n:
                    continue  # no more arrivals: stop controlling
                last_t = t
                self._handle(t, kind, a, b, n)
                continue
            if i >= n:
                break
            t = last_t = next_arrival
            seq = Seq(i, types[i], ins[i], outs[i])
            if self._fits_somewhere(seq):
                self.seqs[i] = seq
                self._admit(seq, t)
            else:
                self.dropped[i] = "exceeds_kv_capacity"
            i += 1
        return self._result(arrival_s, input_tokens, output_tokens, min(last_t, horizon),
                            time.perf_counter() - wall0)

    def _fits_somewhere(self, seq: Seq) -> bool:
        need = seq.max_tokens()
        return not self.active or any(self.reps[g].pool.num_blocks * self.reps[g].pool.block_tokens >= need
                   for g in self.active)

    def _push(self, t: float, kind: int, a, b) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (t, kind, self.counter, a, b))

    def _admit(self, seq: Seq, t: float) -> None:
        if not self.active:  # every replica is being reconfigured: the gateway holds the request
            self.pending.append(seq)
            return
        gid = self._route(seq)
        self.where[seq.req_id] = gid
        nxt = self.reps[gid].on_arrival(seq, t)
        if nxt is not None:
            self._push(nxt, STEP, gid, self.reps[gid].version)

    def _handle(self, t: float, kind: int, a, b, n: int) -> None:
        if kind == STEP:
            rep = self.reps[a]
            if b != rep.version:
                return
            first, finished, nxt = rep.on_step_end(t)
            for seq in first:
                self.first_tok[seq.req_id] = t
            for seq in finished:
                self.finish[seq.req_id] = t
            if nxt is not None:
                self._push(nxt, STEP, a, rep.version)
            self._hand_over(rep, t)
        elif kind == CONTROL:
            self._control(t)
            self._push(t + self.interval_s, CONTROL, None, None)
        elif kind == JOIN:
            self._join(t, *a)
        elif kind == DEADLINE:
            rep = self.reps[a]
            nxt = rep.mark_for_extraction([s.req_id for s in rep.running], t)
            if nxt is not None:
                self._push(nxt, STEP, a, rep.version)
            self._hand_over(rep, t)
        elif kind == ADOPT:
            nxt = self.reps[b].adopt(a, t)
            self.where[a.req_id] = b
            if nxt is not None:
                self._push(nxt, STEP, b, self.reps[b].version)

    # ---- control and switching -------------------------------------------------------------------

    def _observed(self, t: float) -> np.ndarray:
        return window_rates(self.arrivals, self.types, self.num_types, t, self.interval_s)

    def _control(self, t: float) -> None:
        observed = self._observed(t)
        self.history.append(observed)
        forecast = np.maximum(self.forecaster.predict(np.asarray(self.history)), 0.0)
        if self.switching:
            self._record(t, observed, forecast, False, "switch in progress")
            return
        step = control_step(self.control, self.current, self.planned_rps, forecast, self.last_switch_s, t,
                            self.num_drifted_checks)
        self.num_drifted_checks, d = step.num_drifted_checks, step.decision
        if d.switch and d.plan is not None:
            self._start_switch(t, d)
            self.planned_rps = tuple(d.plan.type_rates_rps)
        elif d.plan is not None and self.redispatch:
            self._set_dispatch(d.plan.dispatch, self.plan_to_global)
            self.planned_rps = tuple(d.plan.type_rates_rps)
        self._record(t, observed, forecast, d.switch, d.reason, d.switch_s, d.decide_seconds)

    def _record(self, t, observed, forecast, switched, reason, switch_s=0.0, secs=0.0) -> None:
        gpus: dict[str, int] = {}
        for r in self.current:
            gpus[r.config.label()] = gpus.get(r.config.label(), 0) + r.config.num_gpus
        desc = " + ".join(f"{n // _gpus_of(label, self.current)}x[{label}]"
                          for label, n in sorted(gpus.items()))
        self.result.timeline.append(ControlRecord(t, tuple(map(float, observed)),
                                                  tuple(map(float, forecast)), desc, gpus, switched,
                                                  reason, switch_s, secs))

    def _start_switch(self, t: float, d) -> None:
        tr = d.transition
        kept_new_to_global = {new: self.plan_to_global[old] for old, new in tr.kept}
        kept_globals = set(kept_new_to_global.values())
        stopped = [g for g in self.plan_to_global if g not in kept_globals]
        self.switching, self.last_switch_s = True, t
        self.result.num_switches += 1
        requeue = []
        for g in stopped:
            requeue += self.reps[g].stop_accepting()
        order = [kept_new_to_global.get(r.replica_id, -1) for r in d.plan.replicas]
        self._set_dispatch(d.plan.dispatch, order)  # only kept replicas accept until the join
        for seq in requeue:
            self.result.rerouted += 1
            self._admit(seq, t)
        for g in stopped:
            rep = self.reps[g]
            long = [s.req_id for s in rep.running
                    if s.remaining_output * self.kv_params.tpot_s > self.params.drain_s]
            nxt = rep.mark_for_extraction(long, t) if long else None
            if nxt is not None:
                self._push(nxt, STEP, g, rep.version)
            self._hand_over(rep, t)
            self._push(t + self.params.drain_s, DEADLINE, g, None)
        self._push(t + d.switch_s, JOIN, (d.plan, kept_new_to_global), None)

    def _join(self, t: float, plan: Plan, kept_new_to_global: dict) -> None:
        globals_ = [kept_new_to_global[r.replica_id] if r.replica_id in kept_new_to_global
                    else self._new_replica(r) for r in plan.replicas]
        self._set_deployment(plan, globals_)
        self.switching = False
        pending, self.pending = self.pending, []
        for seq in pending:
            self._admit(seq, t)

    def _hand_over(self, rep: SwitchableReplica, t: float) -> None:
        """Send the sequences a stopping replica released to replicas that keep serving."""
        seqs = rep.take_extracted()
        if not seqs:
            return
        bt = self.cost.params.kv_block_tokens
        dests = [Destination(g, self.reps[g].pool.num_free * bt, self.reps[g].pool.num_blocks * bt)
                 for g in self.active]
        inflight = [InflightRequest(s.req_id, rep.replica_id, s.num_cached, s.remaining_output)
                    for s in seqs]
        params = KvMigrationParams(0.0, self.kv_params.tpot_s, self.kv_params.headroom_frac,
                                   self.kv_params.link_bytes_s)
        plan = plan_kv_migration(inflight, dests, self.kv_bytes_per_token, params)
        by_id = {s.req_id: s for s in seqs}
        for m in plan.migrations:
            self.result.migrated += 1
            self._push(t + m.num_bytes / params.link_bytes_s, ADOPT, by_id[m.req_id], m.dst_replica)
        for rid in plan.requeue + plan.drain:
            seq = by_id[rid]
            preempt_free(seq)
            seq.num_preemptions += 1
            self.result.requeued += 1
            self._admit(seq, t)

    # ---- results -----------------------------------------------------------------------------------

    def _result(self, arrival_s, input_tokens, output_tokens, end_s: float, wall_s: float
                ) -> AdaptiveResult:
        n = len(arrival_s)
        drop = np.where(self.dropped != "", self.dropped,
                        np.where(np.isnan(self.finish), "unfinished_at_horizon", "")).astype(str)
        pre = np.array([s.num_preemptions if s is not None else 0 for s in self.seqs], dtype=np.int64)
        w = self.config.util_bin_s
        num_bins = max(1, int(math.ceil(end_s / w)))
        span = max(end_s, 1e-9)
        stats = []
        for rep, label in zip(self.reps, self.labels):
            bins = tuple(min(1.0, rep.busy_bins.get(b, 0.0) / w) for b in range(num_bins))
            peak = rep.pool.peak_used / rep.pool.num_blocks if rep.pool.num_blocks else 0.0
            stats.append(ReplicaStats(rep.replica_id, label, rep.busy_s, min(1.0, rep.busy_s / span),
                                      bins, peak, rep.num_steps, rep.num_events, rep.num_preemptions,
                                      int((self.where == rep.replica_id).sum()), rep.prefill_tokens,
                                      rep.decode_tokens))
        self.result.sim = SimResult(
            np.asarray(arrival_s, dtype=np.float64), self.first_tok, self.finish,
            np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64),
            self.types, self.where, pre, drop, stats, end_s, wall_s, self.counter + n, 0.0,
            self.config.util_bin_s)
        return self.result
