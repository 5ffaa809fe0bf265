"""Iteration-level batching of one replica, as vLLM schedules an engine step.

Two modes:

* ``chunked`` (vLLM v1's default): a step has a token budget (``max_num_batched_tokens``). Running
  sequences come first, in admission order: one token for each decoding sequence, the next chunk for each
  partly prefilled one; then waiting sequences are admitted first-come first-served with a chunk of their
  prompt while budget, ``max_num_seqs`` and free KV blocks allow.
* ``prefill-first`` (vLLM v0 without chunked prefill): if waiting prompts fit (whole prompts, within the
  token budget, a longer prompt alone), the step prefills only them; otherwise it decodes every running
  sequence.

A step allocates the KV blocks for the tokens it writes. When a running sequence needs a block and none
is free, the most recently admitted running sequence is preempted (its blocks freed, to be recomputed from
the front of the waiting queue), repeatedly, until the block fits or the sequence preempted itself. A step
that preempted admits nothing new. Admission keeps ``watermark_blocks`` free, unless the replica is idle.

For speed the scheduler mutates the replica's queues and block counts in place rather than returning
new immutable state; its decisions depend on nothing but its arguments.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from oserve.common.errors import ConfigError
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.request import Seq

BATCHING_MODES = ("chunked", "prefill-first")


@dataclass(frozen=True)
class BatchingConfig:
    mode: str = "chunked"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    watermark_blocks: int = 0

    def __post_init__(self) -> None:
        if self.mode not in BATCHING_MODES:
            raise ConfigError(f"unknown batching mode '{self.mode}', expected one of {BATCHING_MODES}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ConfigError("max_num_seqs and max_num_batched_tokens must be >= 1")


@dataclass(slots=True)
class StepBatch:
    """What one engine step processes."""

    prefill: list = field(default_factory=list)  # (seq, new tokens)
    decode: list = field(default_factory=list)  # seqs decoding one token each
    num_preempted: int = 0
    prefill_tokens: int = 0
    prefill_sq: float = 0.0  # sum over chunks of c * (c + 2 * cached)
    decode_ctx_total: int = 0  # KV tokens the decode tokens attend to, their own included
    min_output_left: int = 1 << 62  # fewest tokens any decoding sequence still has to produce
    num_decode: int = 0  # decode tokens (len(decode), or the DecodeSet's count when lazy)
    lazy: bool = False  # scheduled by the replica's DecodeSet: ``decode`` is left empty

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.num_decode


def preempt(seq: Seq, pool: BlockPool, count: bool = True) -> None:
    """Free a sequence's blocks; it will prefill its prompt and generated tokens again. ``count=False``
    for a sequence that holds nothing yet (a reset, not a preemption)."""
    pool.release(seq.num_blocks)
    seq.num_blocks = 0
    seq.num_cached = 0
    seq.prefill_target = seq.prompt_tokens + seq.num_generated
    if count:
        seq.num_preemptions += 1


def _schedule_running(running: list, waiting: deque, pool: BlockPool, batch: StepBatch,
                      budget: int, decode_only: bool) -> int:
    """Give each running sequence its tokens for this step, preempting on block shortage."""
    bt = pool.block_tokens
    decode = batch.decode
    append = decode.append
    ctx = 0
    min_left = batch.min_output_left
    i = 0
    while i < len(running):
        seq = running[i]
        cached = seq.num_cached
        decoding = cached >= seq.prefill_target
        if decoding:  # the hot path: one token, usually no new block
            need = (cached + bt) // bt - seq.num_blocks
            if need <= 0:
                append(seq)
                ctx += cached + 1
                left = seq.output_tokens - seq.num_generated
                if left < min_left:
                    min_left = left
                budget -= 1
                i += 1
                continue
            chunk = 1
        else:
            chunk = 0 if decode_only else min(seq.prefill_target - cached, budget)
            if chunk <= 0:
                i += 1
                continue
            need = -(-(cached + chunk) // bt) - seq.num_blocks
        victim = None
        while need > pool.num_free:
            victim = running.pop()
            preempt(victim, pool)
            waiting.appendleft(victim)
            batch.num_preempted += 1
            if victim is seq:
                break
        if victim is seq:
            break
        if need > 0:
            pool.allocate(need)
            seq.num_blocks += need
        if decoding:
            decode.append(seq)
            ctx += cached + 1
            min_left = min(min_left, seq.output_tokens - seq.num_generated)
        else:
            batch.prefill.append((seq, chunk))
            batch.prefill_tokens += chunk
            batch.prefill_sq += chunk * (chunk + 2 * cached)
        budget -= chunk
        i += 1
    batch.decode_ctx_total += ctx
    batch.min_output_left = min_left
    return budget


def admit(seq: Seq, chunk: int, running: list, waiting: deque, pool: BlockPool,
           batch: StepBatch) -> None:
    need = pool.blocks_for(chunk)
    waiting.popleft()
    pool.allocate(need)
    seq.num_blocks = need
    running.append(seq)
    batch.prefill.append((seq, chunk))
    batch.prefill_tokens += chunk
    batch.prefill_sq += chunk * chunk


def _schedule_chunked(cfg: BatchingConfig, waiting: deque, running: list, pool: BlockPool) -> StepBatch:
    batch = StepBatch()
    budget = _schedule_running(running, waiting, pool, batch, cfg.max_num_batched_tokens, False)
    if batch.num_preempted:
        return batch
    while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
        seq = waiting[0]
        chunk = min(seq.prefill_target, budget)
        reserve = cfg.watermark_blocks if running else 0
        if pool.blocks_for(chunk) + reserve > pool.num_free:
            break
        admit(seq, chunk, running, waiting, pool, batch)
        budget -= chunk
    return batch


def _schedule_prefill_first(cfg: BatchingConfig, waiting: deque, running: list,
                            pool: BlockPool) -> StepBatch:
    batch = StepBatch()
    budget = cfg.max_num_batched_tokens
    while waiting and len(running) < cfg.max_num_seqs:
        seq = waiting[0]
        tokens = seq.prefill_target
        if tokens > budget and batch.prefill:
            break
        reserve = cfg.watermark_blocks if (running or batch.prefill) else 0
        if pool.blocks_for(tokens) + reserve > pool.num_free:
            break
        admit(seq, tokens, running, waiting, pool, batch)
        budget -= tokens
    if batch.prefill:
        return batch
    _schedule_running(running, waiting, pool, batch, cfg.max_num_batched_tokens, True)
    return batch


def schedule_step(cfg: BatchingConfig, waiting: deque, running: list, pool: BlockPool) -> StepBatch:
    """Choose the next step's work; allocates its KV blocks and applies any preemption."""
    if cfg.mode == "chunked":
        batch = _schedule_chunked(cfg, waiting, running, pool)
    else:
        batch = _schedule_prefill_first(cfg, waiting, running, pool)
    batch.num_decode = len(batch.decode)
    return batch


__all__ = ["BATCHING_MODES", "BatchingConfig", "StepBatch", "admit", "preempt", "schedule_step"]
