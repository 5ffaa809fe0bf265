"""One simulated replica: its queues, KV blocks, and the engine step in flight.

The replica runs one engine step after another while it has work. A step that only decodes, with no
admission possible and no preemption, repeats identically except that every context grows by one token;
the replica then runs it as a *decode run* of k steps in one event, k being the steps until the first
sequence finishes or until free KV blocks could run short. The run's time has a closed form (the step
time is affine in context). If a request arrives in the middle, the run is cut at the first step boundary
after the arrival, which is exactly when a step-by-step engine would first see the request. The run is
therefore equivalent to simulating its steps one by one, at one event instead of k.

In chunked mode the decoding sequences are kept in a ``DecodeSet`` (``sim.decode_set``), which advances
them all at once, so a step costs work in the number of prefilling sequences, not in the batch. A step
qualifies when nothing the per-sequence scheduler decides depends on the order of the running sequences:
the token budget covers every decode token and every pending prefill chunk, and the free KV blocks cover
every block the step allocates (then nobody is preempted). Any other step, all of prefill-first mode and
the replicas of a disaggregated group run the reference scheduler (``batching.schedule_step``) on the
synced sequences, after which the set is rebuilt. Both paths give the same steps; ``fast=False`` always
takes the reference one (tests).

A deployment switch uses the public operations at the end of the class: stop admitting (hand back the
queue), extract sequences at the next step boundary (with their KV released), adopt a sequence with its
KV cache, and account a sequence that must be recomputed as a preemption.

A replica of a disaggregated group has a role. A ``prefill`` replica runs prompts only: a sequence whose
prefill completes leaves its running set with its KV blocks still held (``take_prefilled``) until the
hand-off to a decode replica ends (``release_held``). A ``decode`` replica reserves the blocks of a
prompt's KV before the transfer starts, as vLLM's connectors do (``reserve``; when they do not fit the
sequence waits in ``incoming``), and takes the sequence into its running set when the transfer ends
(``join``): its first decode step produces the request's first token. It prefills only what it must
recompute after a preemption.
"""

from __future__ import annotations

from collections import deque

from oserve.planner.plan import COLOCATED, DECODE, PREFILL
from oserve.sim.batching import BatchingConfig, StepBatch, admit, preempt, schedule_step
from oserve.sim.decode_set import DecodeSet
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.request import Seq
from oserve.sim.step_timer import StepTimer, decode_run_s, decode_steps_within


class ReplicaSim:
    """A replica's state; ``start``/``on_step_end``/``on_arrival`` return the next step's end time."""

    # slots: a large fleet's replicas are touched in turn, one event each; compact objects keep more
    # of them in the CPU's caches (and slot reads are cheaper than dict lookups)
    __slots__ = ("_decoding", "_fresh", "_joining", "_lazy", "_lazy_batch", "_num_dead", "_prefill_last",
                 "_prefilling", "_running", "_to_extract", "accepting", "batch", "batching", "busy_bins",
                 "busy_s", "decode_runs", "decode_tokens", "extracted", "fast", "held", "incoming",
                 "num_events", "num_preemptions", "num_reference_steps", "num_steps", "num_transferring",
                 "pool", "prefill_tokens", "prefilled", "replica_id", "reserved", "role", "run_steps",
                 "step_end_s", "step_start_s", "timer", "util_bin_s", "version", "waiting")

    def __init__(self, replica_id: int, timer: StepTimer, pool: BlockPool, batching: BatchingConfig,
                 util_bin_s: float = 60.0, decode_runs: bool = True, role: str = COLOCATED,
                 fast: bool = True) -> None:
        self.replica_id = replica_id
        self.role = role
        self.decode_runs = decode_runs  # False: one event per engine step (for equivalence tests)
        # False: always the reference scheduler (tests); disaggregated roles always take it
        self.fast = fast and batching.mode == "chunked" and role == COLOCATED
        self.timer = timer
        self.pool = pool
        self.batching = batching
        self.util_bin_s = util_bin_s
        self.waiting: deque[Seq] = deque()
        self._running: list[Seq] = []  # admission order; members of _decoding hold stale counters
        self._decoding = DecodeSet(pool.block_tokens)
        self._prefilling: list[Seq] = []  # the running sequences not in _decoding, in admission order
        self._joining: list[Seq] = []  # adopted while a fast step was in flight: join at the next step
        self._lazy = False  # _decoding and _prefilling describe _running (fast mode, between rebuilds)
        # the prefilling sequences come after every decoding one in _running (admission order), so a
        # budget that cannot cover every chunk cuts them in _prefilling's order (fast mode)
        self._prefill_last = False
        self._num_dead = 0  # finished sequences still in _running (fast mode removes them in batches)
        self.num_reference_steps = 0  # fast mode: steps that needed the reference scheduler
        self.batch: StepBatch | None = None
        self._lazy_batch = StepBatch(lazy=True)  # what every fast step is (``_fast_schedule``)
        self.step_start_s = 0.0
        self.step_end_s = 0.0
        self.run_steps = 0  # engine steps in the event in flight (> 1 for a decode run)
        self.version = 0  # bumps whenever the in-flight step's end changes
        self.busy_s = 0.0
        self.busy_bins: dict[int, float] = {}
        self.num_steps = 0
        self.num_events = 0
        self.num_preemptions = 0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.accepting = True  # False once a switch stops the replica: the router sends it nothing
        self._to_extract: set[int] = set()  # req ids leaving at the next step boundary
        self.extracted: list[Seq] = []  # left (KV released), not yet taken by the switch
        # disaggregation: prefill side
        self.prefilled: list[Seq] = []  # prefill done, to be handed off (``take_prefilled``)
        self.held: dict[int, int] = {}  # req id -> KV blocks kept until its hand-off ends
        # decode side
        self.incoming: deque[Seq] = deque()  # handed to this replica, waiting for KV room
        self.num_transferring = 0  # blocks reserved, KV on its way
        self.reserved: list[Seq] = []  # reserved from ``incoming`` at a step end (``take_reserved``)
        self._fresh: set[int] = set()  # joined, first token not yet produced

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self._running) - self._num_dead

    @property
    def running(self) -> list[Seq]:
        """The running sequences, in admission order, with their counters exact."""
        self._compact()
        self._sync_all()
        return self._running

    @running.setter
    def running(self, seqs: list[Seq]) -> None:
        self._running = seqs
        self._num_dead = 0
        self._lazy = False

    def generated_tokens(self, seq: Seq) -> int:
        """A running sequence's output tokens as of the last step end (read-only: its counter lags while
        it decodes in a lazy run), for a consumer that streams them."""
        return seq.num_generated + (self._decoding.tick - seq.tick0 if seq.tick0 >= 0 else 0)

    def _compact(self) -> None:
        """Drop the finished sequences from ``_running`` (the order of the others is kept)."""
        if self._num_dead:
            self._running = [s for s in self._running if s.num_generated < s.output_tokens]
            self._num_dead = 0

    def prefill_backlog(self) -> tuple[int, int]:
        """(prompt tokens of the held requests without a first token, requests past their first token):
        the state the SLO spill rule reads (the runtime counts the same from its streams)."""
        tokens = decoding = 0
        for q in (self.waiting, self.running):
            for seq in q:
                if seq.num_generated == 0:
                    tokens += seq.prompt_tokens
                else:
                    decoding += 1
        return tokens, decoding

    @property
    def is_busy(self) -> bool:
        return self.batch is not None

    def on_arrival(self, seq: Seq, now_s: float) -> float | None:
        """Queue a request; returns a new step end time if one must be (re)scheduled."""
        self.waiting.append(seq)
        if self.batch is None:
            return self._start_step(now_s)
        if len(self.waiting) > 1 and self.run_steps > 1:
            # A decode run that started with requests waiting could admit none of them (no seat or no
            # KV room, neither of which frees up during the run); this one queues behind them.
            return None
        return self._cut_run(now_s)

    def on_step_end(self, now_s: float) -> tuple[list[Seq], list[Seq], float | None]:
        """Apply the finished step: (sequences that got their first token, finished ones, next end)."""
        batch, steps = self.batch, self.run_steps
        assert batch is not None, "a step end without a step in flight (simulator bug)"
        start_s = self.step_start_s
        b = int(start_s // self.util_bin_s)
        if now_s <= (b + 1) * self.util_bin_s:  # within one bin (nearly every step): _account_busy inline
            self.busy_s += now_s - start_s
            if start_s < now_s:
                bins = self.busy_bins
                bins[b] = bins.get(b, 0.0) + (now_s - start_s)
        else:
            self._account_busy(start_s, now_s)
        self.num_steps += steps
        self.num_events += 1
        if batch.lazy:
            return self._fast_step_end(batch, steps, now_s)
        first, finished = [], []
        for seq, chunk in batch.prefill:
            seq.num_cached += chunk
            self.prefill_tokens += chunk
            if seq.num_cached >= seq.prefill_target:
                if self.role == PREFILL:
                    self.prefilled.append(seq)
                    continue
                seq.num_generated += 1
                if seq.num_generated == 1:
                    first.append(seq)
                if seq.num_generated >= seq.output_tokens:
                    finished.append(seq)
        bt = self.pool.block_tokens
        if steps == 1:  # step 1's blocks were allocated when it was scheduled
            for seq in batch.decode:
                seq.num_cached += 1
                seq.num_generated += 1
                if seq.num_generated == 1:  # a decode replica's first step on a handed-off sequence
                    first.append(seq)
                if seq.num_generated >= seq.output_tokens:
                    finished.append(seq)
        else:
            new_blocks = 0
            for seq in batch.decode:
                seq.num_cached += steps
                seq.num_generated += steps
                need = -(-seq.num_cached // bt) - seq.num_blocks
                if need > 0:  # blocks for steps 2..k of a decode run
                    seq.num_blocks += need
                    new_blocks += need
                if seq.num_generated >= seq.output_tokens:
                    finished.append(seq)
            self.pool.allocate(new_blocks)  # in one call: same free count and peak as one by one
        self.decode_tokens += steps * len(batch.decode)
        if finished:
            for seq in finished:
                self.pool.release(seq.num_blocks)
                seq.num_blocks = 0
            # the finished ones are exactly the running sequences that produced all their tokens
            self._running = [s for s in self._running if s.num_generated < s.output_tokens]
        if self.prefilled:
            self._hold_prefilled()
        if self._fresh:
            self._fresh.difference_update(s.req_id for s in first)
        self.batch = None
        if self.incoming:  # before the next step is scheduled (a decode run counts on the free blocks)
            self.reserved += self.reserve_incoming()
        return first, finished, self._start_step(now_s)

    def _fast_step_end(self, batch: StepBatch, steps: int, now_s: float
                       ) -> tuple[list[Seq], list[Seq], float | None]:
        """``on_step_end`` of a step the DecodeSet scheduled: the same updates, in aggregate."""
        decoding = self._decoding
        if steps == 0:  # a run cut at its start (a switch's extraction): the step-1 blocks stay with
            self._sync_all()  # their sequences, as in the reference, so they leave the set's invariant
            self._lazy = False
            self.batch = None
            return [], [], self._start_step(now_s)
        pool = self.pool
        num_decode = batch.num_decode
        if num_decode:
            assert num_decode == decoding.count, "decode set out of step (simulator bug)"
            if steps > 1:  # blocks for steps 2..k of a decode run (in one call, as the reference)
                pool.allocate(decoding.new_blocks(1, steps))
            finished = decoding.advance(steps)  # before the prefills: who completes now joins after
            self.decode_tokens += steps * num_decode
        else:
            finished = []
        first = []
        prefill = batch.prefill
        if prefill:
            # the batch's prefills are ``_prefilling``, or (budget-bound) its first ones: those left with
            # part of their prompt stay in it, in order
            still = []
            for seq, chunk in prefill:
                seq.num_cached += chunk
                if seq.num_cached >= seq.prefill_target:
                    seq.num_generated += 1
                    if seq.num_generated == 1:
                        first.append(seq)
                    if seq.num_generated >= seq.output_tokens:
                        finished.append(seq)
                    else:
                        decoding.add(seq)
                else:
                    still.append(seq)
            self.prefill_tokens += batch.prefill_tokens
            # a budget-bound step gave chunks to the first ones only: the others wait their turn
            left = self._prefilling[len(prefill):]
            self._prefilling = still + left if left else still
        if finished:
            released = 0
            for seq in finished:
                released += seq.num_blocks
                seq.num_blocks = 0
            pool.release(released)  # in one call: the free count only grows, so the same checks
            self._num_dead += len(finished)  # removed once they are half the list: O(1) per request
            if 2 * self._num_dead > len(self._running):
                self._compact()
        self.batch = None
        if self.incoming:  # before the next step is scheduled (a decode run counts on the free blocks)
            self.reserved += self.reserve_incoming()
        return first, finished, self._start_step(now_s)

    def _start_step(self, now_s: float) -> float | None:
        if self._to_extract:
            self._extract()
        batch = self._fast_schedule() if self.fast else None
        if batch is None:
            self._compact()
            self._sync_all()
            self._lazy = False
            batch = schedule_step(self.batching, self.waiting, self._running, self.pool)
            self.num_reference_steps += self.fast
        if batch.num_preempted:
            self.num_preemptions += batch.num_preempted
        prefill = batch.prefill
        if not prefill and not batch.num_decode:
            return None
        self.batch = batch
        self.step_start_s = now_s
        # a decode run reports tokens only at its end: not while a joined sequence awaits its first
        if prefill or batch.num_preempted or not self.decode_runs or self._fresh:
            self.run_steps = 1
            largest = (prefill[0][1] if len(prefill) == 1 else
                       max((chunk for _, chunk in prefill), default=0))
            duration = self.timer.step_s(batch.prefill_tokens, len(prefill), batch.prefill_sq,
                                         batch.num_decode, batch.decode_ctx_total, largest)
        else:
            n = batch.num_decode
            to_finish = batch.min_output_left
            pool = self.pool
            safe = 1 + pool.block_tokens * (pool.num_free // n)
            k = self.run_steps = to_finish if to_finish < safe else safe
            if k < 1:
                k = self.run_steps = 1
            a, b = self.timer.decode_line(n)
            # decode_run_s, inline (the same float operations)
            duration = k * (a + b * batch.decode_ctx_total) + b * n * k * (k - 1) / 2.0
        self.step_end_s = now_s + duration
        self.version += 1
        return self.step_end_s

    def _fast_schedule(self) -> StepBatch | None:
        """The next step when it qualifies for the DecodeSet (see the module docstring), else None.
        Allocates exactly what ``batching.schedule_step`` would, in one call."""
        if not self._lazy and not self._rebuild():
            return None
        decoding, pool, cfg = self._decoding, self.pool, self.batching
        if self._joining:
            for seq in self._joining:  # adopted: at the end of _running
                if seq.num_cached >= seq.prefill_target:
                    if self._prefilling:
                        self._prefill_last = False
                    decoding.add(seq)
                else:
                    self._prefilling.append(seq)
            self._joining = []
        num_decode = decoding.count
        budget = cfg.max_num_batched_tokens - num_decode
        decode_need, ctx_total, min_left = decoding.step_view()
        need = decode_need
        prefilling = self._prefilling
        bt = pool.block_tokens
        if prefilling:  # each gets the rest of its prompt
            for seq in prefilling:
                budget -= seq.prefill_target - seq.num_cached
                need += -(-seq.prefill_target // bt) - seq.num_blocks
        if budget < 0:  # the budget cuts a chunk
            if not self._prefill_last:
                return None  # a decode after a prefill in the order takes budget first: the reference
            return self._budget_bound(decode_need, ctx_total, min_left, num_decode)
        if need > pool.num_free:
            return None  # a preemption: order matters, the reference decides
        # every prefill completes in this step: those left are admitted now, at the end of the order
        self._prefill_last = True
        if need:
            pool.allocate(need)
        # the replica's one lazy batch, reset (a step ends before the next is scheduled, and nothing
        # keeps a batch past its step): cheaper than a new StepBatch per step
        batch = self._lazy_batch
        batch.prefill = prefill = []
        batch.prefill_tokens, batch.prefill_sq = 0, 0.0
        batch.decode_ctx_total, batch.min_output_left, batch.num_decode = ctx_total, min_left, num_decode
        if prefilling:
            tokens, sq = 0, 0.0
            for seq in prefilling:
                cached = seq.num_cached
                chunk = seq.prefill_target - cached
                seq.num_blocks = -(-seq.prefill_target // bt)
                prefill.append((seq, chunk))
                tokens += chunk
                sq += chunk * (chunk + 2 * cached)
            batch.prefill_tokens, batch.prefill_sq = tokens, sq
        waiting, running = self.waiting, self._running
        max_seqs = cfg.max_num_seqs + self._num_dead  # the finished ones hold no seat
        while waiting and budget > 0 and len(running) < max_seqs:  # as _schedule_chunked
            seq = waiting[0]
            chunk = min(seq.prefill_target, budget)
            reserve = cfg.watermark_blocks if len(running) > self._num_dead else 0
            if -(-chunk // pool.block_tokens) + reserve > pool.num_free:  # pool.blocks_for, inline
                break
            admit(seq, chunk, running, waiting, pool, batch)
            seq.tick0 = -1
            self._prefilling.append(seq)
            budget -= chunk
        return batch

    def _budget_bound(self, decode_need: int, ctx_total: int, min_left: int, num_decode: int
                      ) -> StepBatch | None:
        """A fast step whose budget cannot cover every prefill chunk, the prefilling sequences after
        every decoding one in the order: as ``batching._schedule_running``, each decode takes its token
        first, then each prefill in order the rest of its prompt or what is left of the budget (the
        first cut one takes all that is left, the later ones nothing); nothing is admitted. None when a
        block is short (a preemption: the reference decides)."""
        pool = self.pool
        bt = pool.block_tokens
        budget = self.batching.max_num_batched_tokens - num_decode
        need = decode_need
        chunks = []
        for seq in self._prefilling:
            if budget <= 0:
                break
            cached = seq.num_cached
            chunk = seq.prefill_target - cached
            if chunk > budget:
                chunk = budget
            blocks = -(-(cached + chunk) // bt) - seq.num_blocks
            if blocks > 0:
                need += blocks
            chunks.append((seq, chunk))
            budget -= chunk
        if need > pool.num_free:
            return None
        if need:
            pool.allocate(need)
        batch = self._lazy_batch
        batch.prefill = prefill = []
        batch.decode_ctx_total, batch.min_output_left, batch.num_decode = ctx_total, min_left, num_decode
        tokens, sq = 0, 0.0
        for seq, chunk in chunks:
            cached = seq.num_cached
            blocks = -(-(cached + chunk) // bt)
            if blocks > seq.num_blocks:
                seq.num_blocks = blocks
            prefill.append((seq, chunk))
            tokens += chunk
            sq += chunk * (chunk + 2 * cached)
        batch.prefill_tokens, batch.prefill_sq = tokens, sq
        return batch

    def _rebuild(self) -> bool:
        """Describe ``_running`` (exact counters) by the DecodeSet and the prefilling list; False when a
        decoding sequence holds other than the blocks of its cached tokens (a decode run cut before its
        first step leaves it holding that step's block: one reference step makes it regular again)."""
        self._compact()
        decoding, bt = self._decoding, self.pool.block_tokens
        decoding.clear()
        prefilling: list[Seq] = []
        self._prefilling = prefilling
        self._joining = []
        prefill_last = True
        for seq in self._running:
            if seq.num_cached >= seq.prefill_target:
                if seq.num_blocks != -(-seq.num_cached // bt):
                    decoding.clear()
                    return False
                if prefilling:
                    prefill_last = False
                decoding.add(seq)
            else:
                seq.tick0 = -1
                prefilling.append(seq)
        self._prefill_last = prefill_last
        self._lazy = True
        return True

    def _sync_all(self) -> None:
        """Write the DecodeSet members' true counters into their sequences (they stay members)."""
        if not self._lazy or not self._decoding.count:
            return
        batch = self.batch
        step_blocks = 1 if batch is not None and batch.lazy and batch.num_decode else 0
        sync = self._decoding.sync
        for seq in self._running:
            if seq.tick0 >= 0:
                sync(seq, step_blocks)

    def _cut_run(self, now_s: float) -> float | None:
        """End a decode run at the first step boundary at or after now (a new request is waiting)."""
        batch = self.batch
        if self.run_steps <= 1 or batch is None:
            return None
        n = batch.num_decode
        line = self.timer.decode_line(n)
        steps = decode_steps_within(line, n, batch.decode_ctx_total, now_s - self.step_start_s,
                                    self.run_steps)
        if steps >= self.run_steps:
            return None
        self.run_steps = steps
        self.step_end_s = self.step_start_s + decode_run_s(line, n, batch.decode_ctx_total, steps)
        self.version += 1
        return self.step_end_s

    # ---- what a deployment switch needs ---------------------------------------------------------------

    def stop_admitting(self) -> list[Seq]:
        """Take no new work; returns the queued sequences (they hold no KV) for re-routing."""
        self.accepting = False
        queued = list(self.waiting)
        self.waiting.clear()
        return queued

    def extract(self, req_ids, now_s: float) -> float | None:
        """These running sequences leave at the next step boundary (now, when idle), their KV released,
        to be collected by ``take_extracted``; returns a new step end when the run in flight was cut."""
        self._to_extract |= set(req_ids)
        if self.batch is None:
            self._extract()
            return None
        return self._cut_run(now_s)

    def take_extracted(self) -> list[Seq]:
        out, self.extracted = self.extracted, []
        return out

    def adopt(self, seq: Seq, now_s: float) -> float | None:
        """Take a sequence with its KV cache, or to recompute (a preemption) when its blocks do not fit;
        returns a new step end if one must be (re)scheduled."""
        need = self.pool.blocks_for(seq.num_cached)
        if seq.num_cached and need <= self.pool.num_free:
            self.pool.allocate(need)
            seq.num_blocks = need
            seq.tick0 = -1
            self._running.append(seq)
            if self._lazy:
                self._joining.append(seq)
        else:
            if seq.num_cached:
                self.num_preemptions += 1
            preempt(seq, self.pool, count=bool(seq.num_cached))
            seq.tick0 = -1
            self.waiting.append(seq)
        if self.batch is None:
            return self._start_step(now_s)
        return self._cut_run(now_s)

    def release_for_recompute(self, seq: Seq) -> None:
        """A sequence this replica extracted will be recomputed elsewhere: one of its preemptions."""
        preempt(seq, self.pool)
        self.num_preemptions += 1

    # ---- what disaggregation needs -------------------------------------------------------------------

    @property
    def decode_load(self) -> int:
        """Sequences a decode replica serves or will serve (its peer choice's load)."""
        return len(self.waiting) + len(self.running) + len(self.incoming) + self.num_transferring

    def _hold_prefilled(self) -> None:
        done = {s.req_id for s in self.prefilled}
        self.running = [s for s in self.running if s.req_id not in done]
        for seq in self.prefilled:
            self.held[seq.req_id] = seq.num_blocks
            seq.num_blocks = 0

    def take_prefilled(self) -> list[Seq]:
        out, self.prefilled = self.prefilled, []
        return out

    def release_held(self, seq: Seq, now_s: float) -> float | None:
        """The hand-off of ``seq`` ended: free the KV blocks kept for it (a step may start)."""
        self.pool.release(self.held.pop(seq.req_id))
        if self.batch is None:
            return self._start_step(now_s)
        return None

    def reserve(self, seq: Seq, now_s: float) -> tuple[bool, float | None]:
        """Reserve the blocks of a handed-off prompt's KV (``seq.num_cached`` tokens) if they and a seat
        are free, or queue it in ``incoming`` (first come, first served; a decode run in flight, which
        counts on its free blocks, is cut at the next step boundary, where the queue is served):
        (whether reserved, a new step end to schedule)."""
        in_run = self.batch is not None and self.run_steps > 1
        if self.incoming or in_run or not self._try_reserve(seq):
            self.incoming.append(seq)
            return False, self._cut_run(now_s) if in_run else None
        return True, None

    def take_reserved(self) -> list[Seq]:
        out, self.reserved = self.reserved, []
        return out

    def reserve_incoming(self) -> list[Seq]:
        """The queued hand-offs whose blocks now fit, in order (their transfers start now); called
        between steps."""
        out = []
        while self.incoming and self._try_reserve(self.incoming[0]):
            out.append(self.incoming.popleft())
        return out

    def _try_reserve(self, seq: Seq) -> bool:
        need = self.pool.blocks_for(seq.num_cached)
        if len(self.running) + self.num_transferring >= self.batching.max_num_seqs or \
                need > self.pool.num_free:
            return False
        self.pool.allocate(need)
        seq.num_blocks = need
        self.num_transferring += 1
        return True

    def join(self, seq: Seq, now_s: float) -> float | None:
        """The KV of ``seq`` arrived: it decodes from the next step on."""
        assert self.role == DECODE, "only a decode replica takes handed-off sequences (simulator bug)"
        self.num_transferring -= 1
        self.running.append(seq)
        self._fresh.add(seq.req_id)
        if self.batch is None:
            return self._start_step(now_s)
        return self._cut_run(now_s)

    def _extract(self) -> None:
        keep = []
        for seq in self.running:
            if seq.req_id in self._to_extract:
                self.pool.release(seq.num_blocks)
                seq.num_blocks = 0
                seq.tick0 = -1
                self.extracted.append(seq)
            else:
                keep.append(seq)
        self.running = keep  # the DecodeSet is rebuilt at the next step
        self._to_extract = set()

    def _account_busy(self, start_s: float, end_s: float) -> None:
        self.busy_s += end_s - start_s
        w = self.util_bin_s
        b = int(start_s // w)
        bins = self.busy_bins
        if end_s <= (b + 1) * w:  # within one bin (nearly every step): the loop's one iteration
            if start_s < end_s:
                bins[b] = bins.get(b, 0.0) + (end_s - start_s)
            return
        while start_s < end_s:
            edge = min(end_s, (b + 1) * w)
            bins[b] = bins.get(b, 0.0) + (edge - start_s)
            start_s = edge
            b += 1
