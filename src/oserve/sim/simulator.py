"""The discrete-event cluster simulator: a trace, a plan, and replicas timed by the cost model.

Events are totally ordered by (time, class, sequence): at equal times, arrivals (in trace order) come
before step ends (in the order they were scheduled). Each replica has at most one live step-end event; a
cut decode run re-schedules it and the old one is recognised as stale by the replica's version number.
Nothing is global: the random generator comes from the config's seed, the step-time caches belong to the
simulation, so several simulations can run in one process and each is reproducible.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.events import EventQueue
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.metrics import ReplicaStats, SimResult
from oserve.sim.replica import ReplicaSim
from oserve.sim.request import Seq
from oserve.sim.router import Router
from oserve.sim.step_timer import CostModelStepTimer, StepTimer

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

    def batching(self, base: BatchingConfig, watermark_frac: float) -> BatchingConfig:
        """This replica's batching: the simulation's, with the replica's own engine settings."""
        return BatchingConfig(base.mode, self.max_num_seqs or base.max_num_seqs,
                              self.max_num_batched_tokens or base.max_num_batched_tokens,
                              int(watermark_frac * self.kv_blocks))


def replicas_from_configs(configs: list[ReplicaConfig], cost_model: CostModel) -> list[ReplicaSetup]:
    """Replica setups timed by the cost model; replicas of one configuration share a timer cache."""
    timers: dict[ReplicaConfig, CostModelStepTimer] = {}
    out = []
    bt = cost_model.params.kv_block_tokens
    for cfg in configs:
        if not cost_model.fits(cfg):
            raise ConfigError(f"replica {cfg.label()} cannot hold {cost_model.model.name} with KV room")
        # step times do not depend on engine settings: replicas of one hardware split share a cache
        timer = timers.setdefault(cfg.hardware, CostModelStepTimer(cost_model, cfg.hardware))
        out.append(ReplicaSetup(cfg.label(), timer, cost_model.kv_capacity_tokens(cfg) // bt,
                                cfg.max_num_seqs or None, cfg.max_num_batched_tokens or None))
    return out


class Simulation:
    """One run: ``Simulation(...).run(arrival_s, input_tokens, output_tokens, type_id)``."""

    def __init__(self, replicas: list[ReplicaSetup], dispatch: DispatchTable, config: SimConfig,
                 batching: BatchingConfig, block_tokens: int = 16,
                 max_context_tokens: int | None = None, decode_runs: bool = True) -> None:
        if not replicas:
            raise ConfigError("a simulation needs at least one replica")
        if dispatch.num_replicas != len(replicas):
            raise ConfigError(f"dispatch table has {dispatch.num_replicas} replicas, plan has "
                              f"{len(replicas)}")
        self.setups = replicas
        self.config = config
        self.max_context_tokens = max_context_tokens
        rng = np.random.default_rng(config.seed)
        self.router = Router(dispatch, config.dispatch, rng)
        self.replicas = [
            ReplicaSim(i, s.timer, BlockPool(s.kv_blocks, block_tokens),
                       s.batching(batching, config.watermark_frac), config.util_bin_s, decode_runs)
            for i, s in enumerate(replicas)]
        self.max_kv_tokens = [r.pool.num_blocks * r.pool.block_tokens for r in self.replicas]

    def run(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
            type_id: np.ndarray, progress: bool = False) -> SimResult:
        """Serve the requests (arrays sorted by arrival) and return their records."""
        wall0 = time.perf_counter()
        rec = _Records(arrival_s, input_tokens, output_tokens, type_id)
        n = len(rec.arrivals)
        queue = EventQueue()
        horizon = (rec.arrivals[-1] if n else 0.0) + self.config.drain_s
        bar = _progress_bar(n, progress)
        i = 0
        while True:
            next_arrival = rec.arrivals[i] if i < n else math.inf
            next_step = queue.next_time_s()
            if next_step is not None and next_step < next_arrival:
                t, _, rid, version = queue.pop()
                if t > horizon:
                    break
                if version == self.replicas[rid].version:
                    self._on_step_end(t, rid, rec, queue)
                continue
            if i >= n:
                break
            self._on_arrival(i, next_arrival, rec, queue)
            i += 1
            if bar is not None and i % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
        if bar is not None:
            bar.update(i % PROGRESS_EVERY)
            bar.close()
        end_s = min(rec.last_t, horizon)
        result = rec.result(end_s, self.config.util_bin_s)
        result.replicas = self._replica_stats(result.replica_id, end_s, result.arrival_s[0] if n else 0.0)
        result.wall_s = time.perf_counter() - wall0
        return result

    def _on_step_end(self, t: float, rid: int, rec: _Records, queue: EventQueue) -> None:
        rec.advance(t)
        rep = self.replicas[rid]
        first, finished, nxt = rep.on_step_end(t)
        for seq in first:
            rec.first_tok[seq.req_id] = t
        for seq in finished:
            rec.finish[seq.req_id] = t
        rec.in_system -= len(finished)
        if nxt is not None:
            queue.push_step_end(nxt, rid, rep.version)

    def _on_arrival(self, i: int, t: float, rec: _Records, queue: EventQueue) -> None:
        rec.advance(t)
        prompt, output = rec.ins[i], rec.outs[i]
        reason = self._admissible(prompt, output)
        if reason:
            rec.drop[i] = reason
            return
        rid = self._route(rec.types[i], prompt + output - 1)
        seq = Seq(i, rec.types[i], prompt, output)
        rec.seqs[i] = seq
        rec.where[i] = rid
        rec.in_system += 1
        rep = self.replicas[rid]
        nxt = rep.on_arrival(seq, t)
        if nxt is not None:
            queue.push_step_end(nxt, rid, rep.version)

    def _admissible(self, prompt: int, output: int) -> str:
        if self.max_context_tokens is not None and prompt + output > self.max_context_tokens:
            return "exceeds_context"
        if prompt + output - 1 > max(self.max_kv_tokens):
            return "exceeds_kv_capacity"
        return ""

    def _route(self, type_id: int, max_tokens: int) -> int:
        queued = [len(r.waiting) for r in self.replicas] if self.router.policy == "spillover" else None
        rid = self.router.route(type_id, [r.num_outstanding for r in self.replicas], queued)
        max_kv = self.max_kv_tokens
        if max_tokens > max_kv[rid]:  # the plan's choice cannot hold it: least loaded that can
            fits = [r for r in range(len(max_kv)) if max_kv[r] >= max_tokens]
            rid = min(fits, key=lambda r: (self.replicas[r].num_outstanding, r))
        return rid

    def _replica_stats(self, where: np.ndarray, end_s: float, start_s: float) -> list[ReplicaStats]:
        span = max(end_s - start_s, 1e-9)
        w = self.config.util_bin_s
        num_bins = max(1, int(math.ceil(end_s / w)))
        out = []
        for rep, setup in zip(self.replicas, self.setups):
            bins = tuple(min(1.0, rep.busy_bins.get(b, 0.0) / w) for b in range(num_bins))
            peak = rep.pool.peak_used / rep.pool.num_blocks if rep.pool.num_blocks else 0.0
            out.append(ReplicaStats(rep.replica_id, setup.label, rep.busy_s, min(1.0, rep.busy_s / span),
                                    bins, peak, rep.num_steps, rep.num_events, rep.num_preemptions,
                                    int((where == rep.replica_id).sum()), rep.prefill_tokens,
                                    rep.decode_tokens))
        return out


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="req", desc="simulating", leave=False, delay=2.0)


class _Records:
    """Per-request records of one run, and the integral of the number of requests in the system."""

    def __init__(self, arrival_s, input_tokens, output_tokens, type_id) -> None:
        n = len(arrival_s)
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.input_tokens = np.asarray(input_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(output_tokens, dtype=np.int64)
        self.type_id = np.asarray(type_id, dtype=np.int64)
        self.arrivals = self.arrival_s.tolist()  # plain floats and ints: faster in the event loop
        self.ins = self.input_tokens.tolist()
        self.outs = self.output_tokens.tolist()
        self.types = self.type_id.tolist()
        self.first_tok = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.where = np.full(n, -1, dtype=np.int64)
        self.drop = np.array([""] * n, dtype=object)
        self.seqs: list[Seq | None] = [None] * n
        self.in_system = 0
        self.area = 0.0
        self.last_t = self.arrivals[0] if n else 0.0
        self.num_events = 0

    def advance(self, t: float) -> None:
        self.area += self.in_system * (t - self.last_t)
        self.last_t = t
        self.num_events += 1

    def result(self, end_s: float, util_bin_s: float) -> SimResult:
        unfinished = np.isnan(self.finish) & (self.drop == "")
        self.drop[unfinished] = "unfinished_at_horizon"
        preemptions = np.array([s.num_preemptions if s is not None else 0 for s in self.seqs],
                               dtype=np.int64)
        return SimResult(self.arrival_s, self.first_tok, self.finish, self.input_tokens,
                         self.output_tokens, self.type_id, self.where, preemptions,
                         self.drop.astype(str), [], end_s, 0.0, self.num_events, self.area, util_bin_s)
