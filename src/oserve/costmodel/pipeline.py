"""Pipeline-parallel step timing: micro-batches, the largest one's stage time, fill/drain bubbles.

How vLLM V1 runs a replica with ``--pipeline-parallel-size p``: the engine core keeps up to ``p`` batches
in flight (its batch queue, ``max_concurrent_batches = p``); while batch j runs on stage s, batch j+1 can
run on stage s-1. Each batch is scheduled with at most ``max_num_batched_tokens`` tokens. A decoding
request sits in at most one in-flight batch (its next token needs the last one: the scheduler skips a
request whose scheduled tokens are not finished yet), while the next chunk of a prompt may be scheduled
while its previous chunk is still in flight (``num_computed_tokens`` advances at scheduling time). So the
running requests circulate in up to ``p`` groups, and one *round* of this ring gives every running
sequence one token.

The simulator's step is one such round (its token budget is ``p`` times the per-batch budget), and the
cost model times it here:

1. **Micro-batches.** The round's items (prompt chunks, cut into pieces of at most the per-batch budget,
   and one token per decoding sequence) are split into ``m = min(p, items)`` micro-batches, pieces
   largest first onto the least-loaded micro-batch, decodes filling up the lightest ones. Balanced as
   far as the items allow: optimistic for vLLM, whose groups form by arrival timing.
2. **The ring's round.** A micro-batch re-enters stage 0 as soon as it leaves stage ``p - 1``, each stage
   serving micro-batches first come first served, every stage taking ``t_j`` for micro-batch j (stages
   hold equal layer counts). The steady-state round is ``max(p * max_j t_j, sum_j t_j)``
   (``ring_round_s``; ``pipeline_makespan_s`` is the exact recurrence it is checked against): with
   ``m <= p`` the largest micro-batch's own trip through the ``p`` stages dominates, so fewer
   micro-batches than stages leave stages idle (throughput ``m/p`` of a full pipeline) and one large
   prompt chunk costs its whole ``p``-stage trip, as on one GPU holding all layers.
3. **Fill and drain.** A synchronous engine that splits one batch into ``m`` equal micro-batches and
   waits for the last would take ``(m + p - 1) t`` (efficiency ``m / (m + p - 1)``;
   ``pipeline_makespan_s`` with one round). vLLM does not wait: the next round's first micro-batch
   enters stage 0 as soon as it is back, so in steady state there is no fill/drain per round, only the
   bubbles of item 2.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class MicroBatch(NamedTuple):
    """One micro-batch's share of a round: prompt pieces (new tokens, cached tokens) and decodes (a
    named tuple: a PP step prices one or two of them per step-timer miss, hashing each)."""

    chunks: tuple[tuple[float, float], ...]
    decodes: int

    @property
    def tokens(self) -> float:
        return sum(c for c, _ in self.chunks) + self.decodes


def pieces(chunks: tuple[tuple[float, float], ...], max_tokens: int) -> list[tuple[float, float]]:
    """Prompt chunks cut into pieces of at most ``max_tokens`` (one batch's budget), each after the
    tokens its predecessors cached."""
    out: list[tuple[float, float]] = []
    for c, p in chunks:
        if c < max_tokens:  # one piece (most chunks): the loop's one iteration, (c - 0, p + 0)
            out.append((c, p))
            continue
        n = max(1, math.ceil(c / max_tokens - 1e-9))
        for j in range(n):
            out.append((min(max_tokens, c - j * max_tokens), p + j * max_tokens))
    return out


def split_micro_batches(chunks: tuple[tuple[float, float], ...], decode_batch: int, pp: int,
                        max_tokens: int) -> list[MicroBatch]:
    """A round's work as ``min(pp, items)`` micro-batches, balanced by tokens as far as items allow."""
    return [MicroBatch(c, d) for c, d in split_round(chunks, decode_batch, pp, max_tokens)[0]]


def split_round(chunks: tuple[tuple[float, float], ...], decode_batch: int, pp: int, max_tokens: int
                ) -> tuple[list[tuple[tuple[tuple[float, float], ...], int]], float]:
    """``split_micro_batches`` as plain (pieces, decodes) tuples (cheaper to build and hash: the cost
    model splits every PP step it prices), and the largest micro-batch's tokens (its ``tokens``; 0.0
    when there is none)."""
    parts = pieces(chunks, max_tokens) if chunks else []
    if len(parts) > 1:
        m = min(pp, len(parts) + decode_batch)
        load = [0.0] * m
        owned: list[list[tuple[float, float]]] = [[] for _ in range(m)]
        for piece in sorted(parts, key=lambda x: -x[0]):  # longest processing time first
            j = load.index(min(load))  # the first least-loaded one
            owned[j].append(piece)
            load[j] += piece[0]
    elif parts:  # one piece (most steps): it on the first micro-batch, the decodes over the rest
        m = min(pp, 1 + decode_batch)
        owned = [parts] + [[] for _ in range(m - 1)]
        load = [0.0 + parts[0][0]] + [0.0] * (m - 1)
    else:
        m = max(1, min(pp, decode_batch))
        owned = [[] for _ in range(m)]
        load = [0.0] * m
    decodes = _water_fill(load, decode_batch)
    micro = []
    largest = 0.0
    for j in range(m):
        d = decodes[j]
        if owned[j] or d:
            micro.append((tuple(owned[j]), d))
            # its tokens: the pieces' sum in this order (as ``MicroBatch.tokens`` adds them) and the
            # decodes; the first larger one is ``max``'s
            tokens = load[j] + d
            if tokens > largest:
                largest = tokens
    return micro, largest


def _water_fill(load: list[float], count: int) -> list[int]:
    """``count`` unit items onto bins with these loads, raising the lightest bins to a common level
    (what one-at-a-time onto the lightest bin gives, in closed form)."""
    m = len(load)
    order = sorted(range(m), key=load.__getitem__)
    out = [0] * m
    k, filled = 1, 0.0  # the k lightest bins hold ``filled`` in all
    filled = load[order[0]]
    while k < m and load[order[k]] * k - filled <= count:  # the k lightest reach the next bin's level
        filled += load[order[k]]
        k += 1
    level = (filled + count) / k  # the k lightest share what they hold plus the items
    left = count
    for j in order[:k]:
        give = max(0, min(left, math.floor(level - load[j])))
        out[j] = give
        left -= give
    for j in order[:k]:  # rounding leftovers, lightest first
        if left <= 0:
            break
        out[j] += 1
        left -= 1
    return out


def ring_round_s(stage_times_s: list[float], pp: int) -> float:
    """Steady-state round of micro-batches circulating through ``pp`` equal stages (each re-entering
    stage 0 on leaving the last, FIFO per stage): the largest one's trip or a stage's total work."""
    if not stage_times_s:
        return 0.0
    return max(pp * max(stage_times_s), sum(stage_times_s))


def pipeline_makespan_s(stage_times_s: list[float], pp: int, rounds: int = 1) -> float:
    """Exact finish time of the last micro-batch after ``rounds`` trips through ``pp`` stages, starting
    empty: ``f[r][j][s] = max(f[r][j][s-1], f[previous micro-batch at stage s]) + t_j``, a micro-batch
    entering stage 0 of its next trip when it leaves the last stage. One round is a synchronous engine's
    batch with fill and drain, ``(m + p - 1) t`` for ``m`` equal micro-batches."""
    m = len(stage_times_s)
    if m == 0:
        return 0.0
    stage_free = [0.0] * pp  # when each stage finishes the micro-batch before
    back = [0.0] * m  # when each micro-batch left the last stage
    for _ in range(rounds):
        for j, t in enumerate(stage_times_s):
            ready = back[j]
            for s in range(pp):
                ready = max(ready, stage_free[s]) + t
                stage_free[s] = ready
            back[j] = ready
    return max(back)


__all__ = ["MicroBatch", "pieces", "pipeline_makespan_s", "ring_round_s", "split_micro_batches",
           "split_round"]
