"""The decoding sequences of one replica, advanced together: O(1) work per engine step, not O(batch).

In vLLM's chunked scheduling every running sequence past its prefill decodes one token in every step
(``batching._schedule_running``), so between the moments a sequence joins (its prefill completes) and
leaves (it finishes), its counters move in lock step with the replica's. The set therefore keeps one
replica clock ``tick`` (decode tokens each member has received) and, per member, the clock at which its
own counters were last written (``Seq.tick0``): a member's true ``num_cached`` and ``num_generated`` are
its stored ones plus ``tick - tick0``. What a step needs of the whole batch comes from aggregates kept up
to date on join and finish:

* the decode context, ``sum(num_cached + 1)``, from the sum of ``num_cached - tick0``;
* the blocks the step allocates: a member needs a new block when it writes at a block boundary
  (``num_cached % block_tokens == 0``), so the members are counted by ``(num_cached - tick0) mod
  block_tokens`` and the count for the next ``k`` steps is a sum over that histogram;
* the fewest tokens any member still has to produce, and who finishes, from a heap of finishing ticks.

``sync`` writes a member's true counters back (its block count as the per-sequence scheduler would have
it: blocks for the step in flight included), so code that reads sequences sees the reference's values.
The replica keeps the set only while its steps are of this lock-step kind and rebuilds it otherwise.
"""

from __future__ import annotations

import heapq

from oserve.sim.request import Seq

NO_DECODE = 1 << 62  # min_output_left of a batch without decode tokens (as ``StepBatch``)


class DecodeSet:
    __slots__ = ("block_tokens", "tick", "count", "_base_sum", "_residues", "_finish", "_order")

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.tick = 0
        self.clear()

    def clear(self) -> None:
        self.count = 0
        self._base_sum = 0  # sum over members of num_cached - tick0
        self._residues = [0] * self.block_tokens  # members by (num_cached - tick0) mod block_tokens
        self._finish: list[tuple[int, int, Seq]] = []  # (tick at which it has all its tokens, order, seq)
        self._order = 0

    def add(self, seq: Seq) -> None:
        """A running sequence whose prefill is complete, with exact counters as of now."""
        tick = seq.tick0 = self.tick
        base = seq.num_cached - tick
        self._residues[base % self.block_tokens] += 1
        self._base_sum += base
        self.count += 1
        self._order += 1
        heapq.heappush(self._finish, (tick + seq.output_tokens - seq.num_generated, self._order, seq))

    def ctx_total(self) -> int:
        """KV tokens the next decode step's tokens attend to, their own included."""
        return self._base_sum + self.count * (self.tick + 1)

    def min_output_left(self) -> int:
        return self._finish[0][0] - self.tick if self.count else NO_DECODE

    def next_step_blocks(self) -> int:
        """``new_blocks(0, 1)`` (what every fast step asks) without its loop."""
        bt = self.block_tokens
        return self.count if bt == 1 else self._residues[-self.tick % bt]

    def step_view(self) -> tuple[int, int, int]:
        """(``next_step_blocks()``, ``ctx_total()``, ``min_output_left()``): what a fast step asks, in
        one call."""
        count = self.count
        if not count:
            return 0, 0, NO_DECODE
        bt, tick = self.block_tokens, self.tick
        return (count if bt == 1 else self._residues[-tick % bt], self._base_sum + count * (tick + 1),
                self._finish[0][0] - tick)

    def new_blocks(self, first_step: int, end_step: int) -> int:
        """Blocks the members allocate in decode steps ``first_step`` .. ``end_step - 1`` from now
        (step 0 is the next one)."""
        bt = self.block_tokens
        k = end_step - first_step
        total = (k // bt) * self.count  # every member crosses one boundary per bt steps
        r = k % bt
        if r:  # the last r steps: residues -(tick + j) % bt for consecutive j, a descending cyclic range
            residues = self._residues
            hi = -(self.tick + end_step - r) % bt  # the first of them; then hi - 1, ..., hi - r + 1
            lo = hi - r + 1
            total += sum(residues[lo:hi + 1]) if lo >= 0 else sum(residues[:hi + 1]) + sum(residues[lo:])
        return total

    def advance(self, steps: int) -> list[Seq]:
        """Every member decoded ``steps`` tokens; the members that now have all theirs leave the set,
        their counters written (their blocks too: what they release)."""
        self.tick += steps
        heap = self._finish
        if not heap or heap[0][0] > self.tick:  # nobody finishes (most steps)
            return []
        done = []
        tick, bt, residues = self.tick, self.block_tokens, self._residues
        while heap and heap[0][0] <= tick:
            seq = heapq.heappop(heap)[2]
            base = seq.num_cached - seq.tick0
            residues[base % bt] -= 1
            self._base_sum -= base
            self.count -= 1
            # self.sync(seq, 0), inline: its true counters, no step in flight
            seq.num_cached = cached = base + tick
            seq.num_generated += tick - seq.tick0
            seq.num_blocks = -(-cached // bt)
            seq.tick0 = -1
            done.append(seq)
        return done

    def sync(self, seq: Seq, step_blocks: int) -> None:
        """Write a member's true counters; ``step_blocks`` = 1 while a decode step is in flight (its block
        was allocated when it was scheduled)."""
        d = self.tick - seq.tick0
        if d:
            seq.num_cached += d
            seq.num_generated += d
            seq.tick0 = self.tick
        seq.num_blocks = -(-(seq.num_cached + step_blocks) // self.block_tokens)


__all__ = ["NO_DECODE", "DecodeSet"]
