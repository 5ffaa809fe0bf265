"""The discrete-event cluster simulator: a trace, a plan, and replicas timed by the cost model.

This is the one event loop, for static plans and, with a ``Controller`` (``sim.adaptive``), for runs
that switch deployments. Events are totally ordered by (time, kind, sequence): at equal times, arrivals
(in trace order) come before step ends (in the order they were scheduled), then the controller's events.
Each replica has at most one live step-end event; a cut decode run re-schedules it and the old one is
recognised as stale by the replica's version number. Nothing is global: the random generator comes from
the config's seed, the step-time caches belong to the simulation, so several simulations can run in one
process and each is reproducible.

A controller drives the switching through the public operations here (add a replica, re-route over a
new set of replicas, admit a sequence, adopt one with its KV cache, schedule its own events) and the
replicas' own (stop admitting, extract, ...); the loop calls it back for its events and when a replica
released sequences it extracted.

A disaggregated plan's groups (``planner.plan``): the router sends requests to colocated and prefill
replicas only; a prefill replica's finished prompt goes to the least-loaded decode replica of its group
that can hold it (``planner.handoff_policy``), which reserves its KV blocks (or queues the
hand-off until it can); the transfer then takes the ``HandoffTimer``'s time (``TRANSFER`` event), after
which the prefill replica frees its copy and the decode replica decodes it. The records keep when each
request's prefill ended (``prefilled_s``) and its KV arrived (``transferred_s``), and the simulation
integrates how many requests each pool holds (``pool_area_s``): prefill from arrival to the transfer's
end, decode from the prefill's end to the last token.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.handoff_policy import least_loaded
from oserve.planner.plan import COLOCATED, DECODE, PREFILL
from oserve.planner.spill_rule import ReplicaSpeed, replica_speeds
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.early_stop import MissBudget, ProbeFailed
from oserve.sim.events import STEP, TRANSFER, EventQueue
from oserve.sim.handoff import HandoffTimer
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.metrics import ReplicaStats, SimResult
from oserve.sim.records import Records
from oserve.sim.replica import ReplicaSim
from oserve.sim.request import Seq
from oserve.sim.router import Router
from oserve.sim.step_timer import CostModelStepTimer, StepTimer, cache_stats
from oserve.workload.slo import Slo

PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class ReplicaSetup:
    """What the simulator needs of one replica: a label, a step timer, its KV blocks and, when the plan
    sets them, its own engine settings (which override the simulation's global ones)."""

    label: str
    timer: StepTimer
    kv_blocks: int
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    role: str = COLOCATED
    group: int | None = None
    pp: int = 1
    speed: ReplicaSpeed | None = None  # the spill rule's step times (``slo-spill`` never spills to None)

    def batching(self, base: BatchingConfig, watermark_frac: float) -> BatchingConfig:
        """This replica's batching: the simulation's, with the replica's own engine settings. With PP a
        step is one round of the ``pp`` batches vLLM keeps in flight, each with the chunk budget, so the
        step's token budget is ``pp`` times it (``costmodel.pipeline``)."""
        per_batch = self.max_num_batched_tokens or base.max_num_batched_tokens
        return BatchingConfig(base.mode, self.max_num_seqs or base.max_num_seqs, per_batch * self.pp,
                              int(watermark_frac * self.kv_blocks))


def replicas_from_configs(configs: list[ReplicaConfig], cost_model: CostModel,
                          timers: dict[ReplicaConfig, CostModelStepTimer] | None = None
                          ) -> list[ReplicaSetup]:
    """Replica setups timed by the cost model; replicas of one configuration share a timer cache
    (``timers``, when given, is that cache across calls)."""
    timers = {} if timers is None else timers
    out = []
    bt = cost_model.params.kv_block_tokens
    for cfg in configs:
        if not cost_model.fits(cfg):
            raise ConfigError(f"replica {cfg.label()} cannot hold {cost_model.model.name} with KV room")
    speeds = replica_speeds(cost_model, configs)
    for cfg, speed in zip(configs, speeds):
        # step times depend on the hardware split (and with PP the chunk budget): replicas that agree
        # on those share a cache
        timer = timers.setdefault(cfg.timing, CostModelStepTimer(cost_model, cfg.timing))
        out.append(ReplicaSetup(cfg.label(), timer, cost_model.kv_capacity_tokens(cfg) // bt,
                                cfg.max_num_seqs or None, cfg.max_num_batched_tokens or None, pp=cfg.pp,
                                speed=speed))
    return out


class Controller(Protocol):
    """What the event loop calls back (the adaptive run's switching implements it)."""

    def start(self, sim: Simulation) -> None:
        """Before the first event: queue the controller's first events (``sim.schedule``)."""

    def on_event(self, sim: Simulation, t: float, kind: int, a: object, b: object) -> None:
        """One of the controller's own events (kind > STEP), at time ``t``."""

    def on_extracted(self, sim: Simulation, replica_id: int, t: float) -> None:
        """A replica's step boundary released sequences marked for extraction."""


class Simulation:
    """One run: ``Simulation(...).run(arrival_s, input_tokens, output_tokens, type_id)``."""

    def __init__(self, replicas: list[ReplicaSetup], dispatch: DispatchTable, config: SimConfig,
                 batching: BatchingConfig, block_tokens: int = 16,
                 max_context_tokens: int | None = None, decode_runs: bool = True,
                 handoff: HandoffTimer | None = None,
                 type_slos: tuple[Slo, ...] | None = None, fast_steps: bool = True) -> None:
        if not replicas:
            raise ConfigError("a simulation needs at least one replica")
        if any(s.role != COLOCATED for s in replicas) and handoff is None:
            raise ConfigError("a plan with disaggregated groups needs a KV hand-off timer")
        if dispatch.num_replicas != len(replicas):
            raise ConfigError(f"dispatch table has {dispatch.num_replicas} replicas, plan has "
                              f"{len(replicas)}")
        self.config = config
        self.batching = batching
        self.block_tokens = block_tokens
        self.decode_runs = decode_runs
        # False: every step by the reference scheduler and every routing choice by a scan of the counts
        # (equivalence tests)
        self.fast_steps = fast_steps
        self.max_context_tokens = max_context_tokens
        self.router = Router(config.dispatch, np.random.default_rng(config.seed), type_slos,
                             load_index=fast_steps)
        # the router reads a colocated replica's own counts only (no backlog, nothing downstream)
        self._plain_router = not self.router.needs_backlog
        self.handoff = handoff
        self.setups: list[ReplicaSetup] = []
        self.replicas: list[ReplicaSim] = []
        for s in replicas:
            self.add_replica(s)
        self.peers = _group_peers(replicas)  # prefill replica -> the decode replicas of its group
        self._source: dict[int, int] = {}  # req id -> the prefill replica of a hand-off in progress
        # a request routed to a prefill replica stays outstanding there, for the router, until its last
        # token (as on a colocated replica): else the router sees prefill replicas nearly idle and sends
        # them more than the plan's share beside colocated replicas
        self._origin: dict[int, int] = {}  # req id -> its prefill replica, from hand-off to finish
        self._downstream: dict[int, int] = {rid: 0 for rid in self.peers}  # per prefill replica
        self.pool_in = {PREFILL: 0, DECODE: 0}  # requests in each pool now
        self.pool_area_s = {PREFILL: 0.0, DECODE: 0.0}  # their integral over time
        self._pool_t = 0.0
        self.set_dispatch(dispatch.weights, list(range(len(replicas))))
        self.pending: list[Seq] = []  # held at the gateway while no replica accepts work
        self.queue = EventQueue()
        self._heap, self._next_seq = self.queue.heap, self.queue.next_seq  # pushed to inline
        self.records = Records(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))  # set by run
        self.controller: Controller | None = None
        self.budget: MissBudget | None = None  # set by run: stop once the probe must fail
        self._plain_steps = False  # set by run

    # ---- operations a controller uses -----------------------------------------------------------------

    def add_replica(self, setup: ReplicaSetup) -> int:
        """A new replica (routed to once ``set_dispatch`` names it); returns its id."""
        rep = ReplicaSim(len(self.replicas), setup.timer, BlockPool(setup.kv_blocks, self.block_tokens),
                         setup.batching(self.batching, self.config.watermark_frac),
                         self.config.util_bin_s, self.decode_runs, setup.role, self.fast_steps)
        self.replicas.append(rep)
        self.setups.append(setup)
        return rep.replica_id

    def set_dispatch(self, dispatch, replica_ids: list[int]) -> None:
        """Route by ``dispatch`` (weights[type][column]) over ``replica_ids`` (one per column; a negative
        id is a replica not there yet), restricted to those that accept work; credits start afresh."""
        cols = [c for c, rid in enumerate(replica_ids) if rid >= 0 and self.replicas[rid].accepting
                and self.replicas[rid].role != DECODE]
        active = [replica_ids[c] for c in cols]
        table = DispatchTable(tuple(tuple(float(row[c]) for c in cols) for row in dispatch))
        reps = [self.replicas[rid] for rid in active]
        self.router.set_table(table, active, [self._kv_tokens(r.replica_id) for r in reps],
                              [r.num_outstanding + self._downstream.get(r.replica_id, 0) for r in reps],
                              [len(r.waiting) for r in reps],
                              [self.setups[rid].speed for rid in active])
        if self.router.needs_backlog:
            for rid in active:
                self._update_router(rid)

    def _kv_tokens(self, rid: int) -> int:
        """The most KV tokens a request routed here may hold: a prefill replica's own prompt and the
        largest decode replica of its group."""
        tokens = self.replicas[rid].pool.num_blocks * self.block_tokens
        peers = self.peers.get(rid)
        if peers:
            tokens = min(tokens, max(self.replicas[d].pool.num_blocks for d in peers) * self.block_tokens)
        return tokens

    def admit(self, seq: Seq, t: float) -> None:
        """Route a sequence (new, re-routed or re-queued) to a replica, or hold it when none accepts."""
        router = self.router
        if not router.is_open:
            self.pending.append(seq)
            return
        rid = router.route(seq.type_id, seq.prompt_tokens + seq.output_tokens - 1, seq.prompt_tokens)
        self.records.where[seq.req_id] = rid
        rep = self.replicas[rid]
        if rep.role == PREFILL:
            self._pool_change(t, PREFILL, 1)
        nxt = rep.on_arrival(seq, t)
        if nxt is not None:  # self.queue.push_step_end(nxt, rid, rep.version), inline
            heapq.heappush(self._heap, (nxt, STEP, self._next_seq(), rid, rep.version))
        if self._plain_router and rep.role == COLOCATED:  # _update_router(rid), inline
            waiting = len(rep.waiting)
            router.update(rid, waiting + len(rep._running) - rep._num_dead, waiting)
        else:
            self._update_router(rid)

    def _update_router(self, rid: int) -> None:
        """Tell the router a replica's load (its prefill backlog only when the policy reads it)."""
        rep = self.replicas[rid]
        outstanding = rep.num_outstanding + self._downstream.get(rid, 0)
        if self.router.needs_backlog:
            tokens, decoding = rep.prefill_backlog()
            self.router.update(rid, outstanding, len(rep.waiting), tokens, decoding)
        else:
            self.router.update(rid, outstanding, len(rep.waiting))

    def adopt(self, replica_id: int, seq: Seq, t: float) -> None:
        """``replica_id`` takes a sequence with its KV cache (or to recompute, when it has no room)."""
        rep = self.replicas[replica_id]
        self.records.where[seq.req_id] = replica_id
        self.push_step(replica_id, rep.adopt(seq, t))
        self._update_router(replica_id)

    def release_pending(self, t: float) -> None:
        pending, self.pending = self.pending, []
        for seq in pending:
            self.admit(seq, t)

    def push_step(self, replica_id: int, end_s: float | None) -> None:
        """Queue the step end a replica operation returned (None: nothing to queue)."""
        if end_s is not None:
            self.queue.push_step_end(end_s, replica_id, self.replicas[replica_id].version)

    def schedule(self, t: float, kind: int, a: object = None, b: object = None) -> None:
        """Queue a controller event (``kind`` > STEP)."""
        self.queue.push(t, kind, a, b)

    # ---- the event loop -------------------------------------------------------------------------------

    def run(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
            type_id: np.ndarray, progress: bool = False,
            controller: Controller | None = None, budget: MissBudget | None = None) -> SimResult:
        """Serve the requests (arrays sorted by arrival) and return their records. With ``budget``
        (``sim.early_stop``, a goodput probe's) the run stops as soon as the probe must fail: the records
        are then partial (``meta["stopped_early_s"]``, the requests in flight marked unfinished)."""
        wall0 = time.perf_counter()
        rec = self.records = Records(arrival_s, input_tokens, output_tokens, type_id)
        self.controller = controller
        self.budget = budget
        # a step end then only updates the records, the queue and the router's counts
        self._plain_steps = (self._plain_router and controller is None and budget is None
                             and all(r.role == COLOCATED for r in self.replicas))
        if budget is not None:
            budget.bind(rec.arrival_s, rec.output_tokens, rec.first_tok)
        try:
            self._loop(progress)
        except ProbeFailed:
            assert budget is not None  # only a budget raises it
            budget.stopped_s = rec.last_t
        horizon = rec.last_arrival_s + self.config.drain_s
        end_s = min(rec.last_t, horizon)
        result = rec.result(end_s, self.config.util_bin_s, self._live_seqs())
        result.replicas = self._replica_stats(result.replica_id, end_s, rec.first_arrival_s)
        result.meta["step_timer"] = cache_stats(s.timer for s in self.setups)
        # engine steps the DecodeSet could not schedule (order-dependent: preemption, a binding budget)
        result.meta["reference_steps"] = sum(r.num_reference_steps for r in self.replicas)
        if budget is not None and budget.stopped_s is not None:
            result.meta["stopped_early_s"] = budget.stopped_s
        result.wall_s = time.perf_counter() - wall0
        return result

    def _loop(self, progress: bool) -> None:
        rec = self.records
        controller = self.controller
        n = rec.n
        heap = self.queue.heap
        pop = heapq.heappop
        replicas = self.replicas
        on_step_end, on_arrival = self._on_step_end, self._on_arrival
        horizon = rec.last_arrival_s + self.config.drain_s
        bar = _progress_bar(n, progress)
        if controller is not None:
            controller.start(self)
        i = 0
        base, arrivals, prompts, outputs, types = rec.arrival_chunk(0)
        next_arrival = arrivals[0] if n else math.inf
        past_horizon = False
        while True:
            # the queued events before the next arrival (at equal times the arrival comes first)
            while heap and heap[0][0] < next_arrival:
                t, kind, _, a, b = pop(heap)
                if t > horizon:
                    past_horizon = True
                    break
                if kind == STEP:
                    if b == replicas[a].version:
                        on_step_end(t, a)
                elif kind == TRANSFER:
                    self._on_transfer(t, a, b)
                elif controller is not None:  # only a controller queues other kinds
                    rec.advance(t)
                    controller.on_event(self, t, kind, a, b)
            if past_horizon or i >= n:
                break
            j = i - base
            on_arrival(i, next_arrival, prompts[j], outputs[j], types[j])
            i += 1
            if j + 1 == len(arrivals):
                base, arrivals, prompts, outputs, types = rec.arrival_chunk(i)
            next_arrival = arrivals[i - base] if i < n else math.inf
            if bar is not None and i % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
        if bar is not None:
            bar.update(i % PROGRESS_EVERY)
            bar.close()

    def _on_step_end(self, t: float, rid: int) -> None:
        rec = self.records
        rec.area += rec.in_system * (t - rec.last_t)  # rec.advance(t), inline (once per event)
        rec.last_t = t
        rec.num_events += 1
        rep = self.replicas[rid]
        start_s = rep.step_start_s
        first, finished, nxt = rep.on_step_end(t)
        if first:
            first_tok = rec.first_tok
            for seq in first:
                first_tok[seq.req_id] = t
        if finished:
            rec.finished(finished, t)
        if nxt is not None:  # self.queue.push_step_end(nxt, rid, rep.version), inline
            heapq.heappush(self._heap, (nxt, STEP, self._next_seq(), rid, rep.version))
        if self._plain_steps:  # _update_router(rid), inline; nothing else to do
            waiting = len(rep.waiting)
            self.router.update(rid, waiting + len(rep._running) - rep._num_dead, waiting)
            return
        if self.budget is not None:
            self.budget.step_end(t, first, finished)
        if self._plain_router and rep.role == COLOCATED:
            waiting = len(rep.waiting)
            self.router.update(rid, waiting + len(rep._running) - rep._num_dead, waiting)
        else:
            self._update_router(rid)
            if rep.role != COLOCATED:
                self._after_step_disaggregated(t, rep, finished, t - start_s)
        if rep.extracted and self.controller is not None:
            self.controller.on_extracted(self, rid, t)

    # ---- disaggregation -------------------------------------------------------------------------------

    def _after_step_disaggregated(self, t: float, rep: ReplicaSim, finished: list[Seq],
                                  last_pass_s: float) -> None:
        if rep.role == PREFILL:
            for seq in rep.take_prefilled():
                self._hand_off(t, rep.replica_id, seq, last_pass_s)
            self._update_router(rep.replica_id)
            return
        if finished:
            self._pool_change(t, DECODE, -len(finished))
            for seq in finished:
                origin = self._origin.pop(seq.req_id)
                self._downstream[origin] -= 1
                self._update_router(origin)
        if rep.reserved:  # queued hand-offs that fit at this step boundary start now
            for seq in rep.take_reserved():
                self._start_transfer(t, seq, rep.replica_id, 0.0)

    def _hand_off(self, t: float, prefill_id: int, seq: Seq, last_pass_s: float) -> None:
        """A prompt finished on ``prefill_id``: to the least-loaded decode peer that can hold it."""
        self.records.prefilled_s[seq.req_id] = t
        self._pool_change(t, DECODE, 1)
        self._source[seq.req_id] = prefill_id
        self._origin[seq.req_id] = prefill_id
        self._downstream[prefill_id] += 1
        peers = self.peers[prefill_id]
        # a handed-off sequence holds one KV token more than a colocated one (its first decode step)
        need = seq.max_tokens() + 1
        cands = [d for d in peers if self.replicas[d].pool.num_blocks * self.block_tokens >= need] or peers
        decode_id = cands[least_loaded([self.replicas[d].decode_load for d in cands])]
        reserved, end_s = self.replicas[decode_id].reserve(seq, t)
        if reserved:
            self._start_transfer(t, seq, decode_id, last_pass_s)
        self.push_step(decode_id, end_s)

    def _start_transfer(self, t: float, seq: Seq, decode_id: int, last_pass_s: float) -> None:
        assert self.handoff is not None  # checked in __init__
        prefill_id = self._source[seq.req_id]
        dt = self.handoff.exposed_s(prefill_id, decode_id, seq.num_cached, last_pass_s)
        self.queue.push(t + dt, TRANSFER, seq, decode_id)

    def _on_transfer(self, t: float, seq: Seq, decode_id: int) -> None:
        self.records.advance(t)
        self.records.transferred_s[seq.req_id] = t
        self._pool_change(t, PREFILL, -1)
        prefill_id = self._source.pop(seq.req_id)
        self.push_step(prefill_id, self.replicas[prefill_id].release_held(seq, t))
        self.push_step(decode_id, self.replicas[decode_id].join(seq, t))

    def _pool_change(self, t: float, role: str, delta: int) -> None:
        for r, n in self.pool_in.items():
            self.pool_area_s[r] += n * (t - self._pool_t)
        self._pool_t = t
        self.pool_in[role] += delta

    def _on_arrival(self, i: int, t: float, prompt: int, output: int, type_id: int) -> None:
        rec = self.records
        rec.area += rec.in_system * (t - rec.last_t)  # rec.advance(t), inline (once per event)
        rec.last_t = t
        rec.num_events += 1
        max_kv = self.router.max_kv_tokens  # None while no replica accepts: the gateway holds it
        if self.max_context_tokens is not None and prompt + output > self.max_context_tokens:
            rec.drop(i, "exceeds_context")
            if self.budget is not None:
                self.budget.dropped(i)
        elif max_kv is not None and prompt + output - 1 > max_kv:
            rec.drop(i, "exceeds_kv_capacity")
            if self.budget is not None:
                self.budget.dropped(i)
        else:
            rec.in_system += 1  # admitted: in the system until it finishes or the run ends
            self.admit(Seq(i, type_id, prompt, output), t)

    def _live_seqs(self) -> list[Seq]:
        """Sequences still in the system at the end (their preemption counts go into the records)."""
        live = list(self.pending)
        for rep in self.replicas:
            live += rep.waiting
            live += rep.running
            live += rep.extracted
            live += rep.incoming
        for event in self.queue.heap:
            live += [x for x in event[3:] if isinstance(x, Seq)]
        return live

    def _replica_stats(self, where: np.ndarray, end_s: float, start_s: float) -> list[ReplicaStats]:
        span = max(end_s - start_s, 1e-9)
        w = self.config.util_bin_s
        num_bins = max(1, int(math.ceil(end_s / w)))
        counts = np.bincount(where[where >= 0], minlength=len(self.replicas))
        out = []
        for rep, setup in zip(self.replicas, self.setups):
            bins = tuple(min(1.0, rep.busy_bins.get(b, 0.0) / w) for b in range(num_bins))
            peak = rep.pool.peak_used / rep.pool.num_blocks if rep.pool.num_blocks else 0.0
            out.append(ReplicaStats(rep.replica_id, setup.label, rep.busy_s, min(1.0, rep.busy_s / span),
                                    bins, peak, rep.num_steps, rep.num_events, rep.num_preemptions,
                                    int(counts[rep.replica_id]), rep.prefill_tokens,
                                    rep.decode_tokens))
        return out


def _group_peers(setups: list[ReplicaSetup]) -> dict[int, list[int]]:
    decode: dict[int, list[int]] = {}
    for rid, s in enumerate(setups):
        if s.role == DECODE:
            decode.setdefault(s.group or 0, []).append(rid)
    return {rid: decode[s.group or 0] for rid, s in enumerate(setups) if s.role == PREFILL}


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="req", desc="simulating", leave=False, delay=2.0)
