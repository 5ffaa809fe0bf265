"""Engine step times for the simulator: the cost model behind a cache, or a constant for tests.

A cost-model call costs tens of microseconds and a simulation takes millions of steps, so the timer
memoises. Two facts about ``CostModel.step_time_s`` make that cheap and exact enough:

* it is affine in the decode context ``decode_ctx_total`` for a fixed batch shape (decode attention reads
  the KV cache, whose size is linear in context; checked to ~1e-5 relative), so each batch shape stores an
  intercept and a slope from two calls, and a run of decode steps whose context grows by ``batch`` tokens
  per step has a closed-form total time (``decode_run_s``);
* it depends on the prefill chunks only through their count, their token total and ``sum c(c+2p)`` (the
  causal-attention term), so a step with prefill is keyed on those three aggregates, rounded to a
  geometric grid (about 1% apart), and priced with equal representative chunks that have exactly the
  rounded aggregates. The result is a pure function of the key: no dependence on call order. With PP the
  largest chunk joins the key (one large chunk cannot be spread over the pipeline's micro-batches,
  ``costmodel.pipeline``), and the representative chunks are it and equal others.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.step_pricer import StepPricer

GRID_STEPS_PER_OCTAVE = 64
EXACT_BELOW = 256
CTX_PROBE_TOKENS = (256, 4096)  # per sequence: where the affine fit in context is taken
GRID_MEMO = 1 << 17  # quantized values a timer remembers


def quantize(x: float) -> float:
    """Round a non-negative quantity to a geometric grid (exact below EXACT_BELOW)."""
    if x < EXACT_BELOW:
        return float(round(x))
    e = round(math.log2(x) * GRID_STEPS_PER_OCTAVE)
    return 2.0 ** (e / GRID_STEPS_PER_OCTAVE)


class StepTimer(Protocol):
    """Times engine steps of one replica."""

    def step_s(self, prefill_tokens: int, num_prefill: int, prefill_sq: float, decode_batch: int,
               decode_ctx_total: float, max_chunk_tokens: int = 0) -> float:
        """One step: ``num_prefill`` chunks of ``prefill_tokens`` in all (``prefill_sq`` = sum of
        c*(c+2p) over chunks of c new tokens after p cached ones) plus ``decode_batch`` decode tokens over
        ``decode_ctx_total`` cached tokens; ``max_chunk_tokens`` is the largest chunk (with PP it decides how
        the step splits over the pipeline)."""
        ...

    def decode_line(self, batch: int) -> tuple[float, float]:
        """(intercept_s, slope_s_per_token) of a decode-only step of ``batch`` sequences vs context."""
        ...


def decode_run_s(line: tuple[float, float], batch: int, ctx_total: float, num_steps: int) -> float:
    """Total time of ``num_steps`` decode steps starting at ``ctx_total``, context growing by batch."""
    a, b = line
    return num_steps * (a + b * ctx_total) + b * batch * num_steps * (num_steps - 1) / 2.0


def decode_steps_within(line: tuple[float, float], batch: int, ctx_total: float, elapsed_s: float,
                        max_steps: int) -> int:
    """The fewest decode steps whose total time reaches ``elapsed_s`` (at most ``max_steps``)."""
    a, b = line
    first = a + b * ctx_total
    inc = b * batch
    if elapsed_s <= 0:
        return 0
    if inc <= 1e-15:
        n = math.ceil(elapsed_s / first - 1e-12)
    else:  # solve n*first + inc*n(n-1)/2 = elapsed for n
        qa, qb = inc / 2.0, first - inc / 2.0
        n = math.ceil((-qb + math.sqrt(qb * qb + 4 * qa * elapsed_s)) / (2 * qa) - 1e-9)
    n = max(1, min(n, max_steps))
    # decode_run_s(line, batch, ctx_total, m), inline: m * first + b * batch * m * (m - 1) / 2.0
    while n > 1 and (n - 1) * first + b * batch * (n - 1) * (n - 2) / 2.0 >= elapsed_s:
        n -= 1
    while n < max_steps and n * first + b * batch * n * (n - 1) / 2.0 < elapsed_s:
        n += 1
    return n


@dataclass
class CostModelStepTimer:
    """Step times of one replica configuration from the cost model, memoised (one per simulation).

    ``lookups`` counts the cache lookups (one per step priced), ``misses`` those that had to call the
    cost model and ``miss_s`` the time they took (``perf_counter``, not a CPU-time clock: that is a system
    call, about 0.5 us on the VM measured, twice per miss; a simulation is single-threaded, so the two
    differ only by preemption); ``hit_rate`` is what a simulation reports
    (``SimResult.meta["step_timer"]``)."""

    cost_model: CostModel
    config: ReplicaConfig
    _lines: dict = field(default_factory=dict, repr=False)
    _mixed: dict = field(default_factory=dict, repr=False)
    _grid: dict = field(default_factory=dict, repr=False)  # quantize's results (a pure function)
    lookups: int = 0
    misses: int = 0
    miss_s: float = 0.0
    _pp: bool = field(init=False, repr=False)  # pipeline parallel: the largest chunk is in the key
    _pricer: StepPricer = field(init=False, repr=False)  # the cost model's step times of the config

    def __post_init__(self) -> None:
        self._pp = self.config.pp > 1
        self._pricer = self.cost_model.pricer(self.config)

    @property
    def hit_rate(self) -> float | None:
        return 1.0 - self.misses / self.lookups if self.lookups else None

    def decode_line(self, batch: int) -> tuple[float, float]:
        self.lookups += 1
        line = self._lines.get(batch)
        if line is None:
            self.misses += 1
            t0 = time.perf_counter()
            c1, c2 = (batch * c for c in CTX_PROBE_TOKENS)
            t1, t2 = self._decode_only(batch, c1), self._decode_only(batch, c2)
            slope = (t2 - t1) / (c2 - c1)
            line = (t1 - slope * c1, slope)
            self._lines[batch] = line
            self.miss_s += time.perf_counter() - t0
        return line

    def _decode_only(self, batch: int, ctx: float) -> float:
        return self.cost_model.decode_step_s(self.config, batch, ctx)

    def step_s(self, prefill_tokens: int, num_prefill: int, prefill_sq: float, decode_batch: int,
               decode_ctx_total: float, max_chunk_tokens: int = 0) -> float:
        if num_prefill == 0:
            a, b = self.decode_line(decode_batch)
            return a + b * decode_ctx_total
        # with PP the largest chunk decides how the step splits over the pipeline: part of the key
        largest = quantize(max_chunk_tokens) if self._pp and num_prefill > 1 else 0.0
        grid = self._grid
        tokens_q = grid.get(prefill_tokens)
        if tokens_q is None:
            tokens_q = self._on_grid(prefill_tokens)
        sq_q = grid.get(prefill_sq)
        if sq_q is None:
            sq_q = self._on_grid(prefill_sq)
        key = (tokens_q, num_prefill, sq_q, decode_batch, largest)
        self.lookups += 1
        line = self._mixed.get(key)
        if line is None:
            self.misses += 1
            t0 = time.perf_counter()
            line = self._mixed_line(*key)
            self._mixed[key] = line
            self.miss_s += time.perf_counter() - t0
        return line[0] + line[1] * decode_ctx_total

    def _on_grid(self, x: float) -> float:
        """``quantize(x)``, remembered (up to GRID_MEMO values: a long run's memory stays bounded)."""
        q = quantize(x)
        if len(self._grid) < GRID_MEMO:
            self._grid[x] = q  # an int and the equal float share a key: quantize gives both the same
        return q

    def _mixed_line(self, tokens: float, n: int, sq: float, batch: int,
                    largest: float) -> tuple[float, float]:
        # n representative chunks with the key's token total and sum c(c+2p), all after the same p
        # cached tokens: equal ones, or (with PP) the largest and n-1 equal others
        sizes = [tokens / n] * n
        if largest and n > 1:
            big = min(largest, tokens)
            sizes = [big] + [(tokens - big) / (n - 1)] * (n - 1)
        p = max(0.0, (sq - sum(c * c for c in sizes)) / (2 * tokens))
        chunks = tuple((c, p) for c in sizes if c > 0)
        if batch == 0:
            return (self._pricer.step_times(chunks, 0, (0.0,))[0], 0.0)  # CostModel.step_time_s's
        c1, c2 = (batch * x for x in CTX_PROBE_TOKENS)
        # both contexts in one call: the same two step_time_s values, the split and the
        # context-free terms computed once
        t1, t2 = self._pricer.step_times(chunks, batch, (c1, c2))
        slope = (t2 - t1) / (c2 - c1)
        return (t1 - slope * c1, slope)


@dataclass(frozen=True)
class ConstantStepTimer:
    """Every step takes the same time, whatever it holds: the queueing-theory test double."""

    step_time_s: float

    def step_s(self, prefill_tokens: int, num_prefill: int, prefill_sq: float, decode_batch: int,
               decode_ctx_total: float, max_chunk_tokens: int = 0) -> float:
        return self.step_time_s

    def decode_line(self, batch: int) -> tuple[float, float]:
        return (self.step_time_s, 0.0)


def cache_stats(timers) -> dict:
    """Lookups, misses, hit rate and seconds spent on misses over the distinct memoised timers."""
    distinct = {id(t): t for t in timers if isinstance(t, CostModelStepTimer)}.values()
    lookups = sum(t.lookups for t in distinct)
    misses = sum(t.misses for t in distinct)
    return {"lookups": lookups, "misses": misses,
            "hit_rate": 1.0 - misses / lookups if lookups else None,
            "miss_s": sum(t.miss_s for t in distinct)}


__all__ = ["ConstantStepTimer", "CostModelStepTimer", "StepTimer", "cache_stats", "decode_run_s",
           "decode_steps_within", "quantize"]
