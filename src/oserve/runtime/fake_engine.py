"""A fake engine for tests and load experiments: no model, timed by a simple cost.

Serving a request takes ``prefill_s_per_token * prompt_tokens`` before the first token and
``decode_s_per_token`` per further token; at most ``max_num_seqs`` requests run at once, the rest wait.
With both times zero it answers at once, which isolates the gateway's own overhead. ``kill()`` makes it
behave like a crashed replica: running and new generations raise ``EngineDeadError``.

Roles, as vLLM's NIXL connector plays them: asked with ``kv_transfer_params`` ``do_remote_decode``, the
engine prefills, returns one token and the parameters of its KV blocks (``remote_engine_id``,
``remote_block_ids``, ``prompt_tokens``); asked with a prefill replica's parameters
(``do_remote_prefill``), it waits ``handoff_s`` (the transfer), skips the prefill and decodes. Malformed
parameters (no engine id, block ids that do not cover the prompt) fail with ``KvHandoffError``; a decode
replica asked without parameters prefills itself, as vLLM does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk, estimate_tokens
from oserve.runtime.errors import EngineDeadError, KvHandoffError

KV_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class FakeCost:
    """Service time of the fake engine."""

    prefill_s_per_token: float = 0.0
    decode_s_per_token: float = 0.0
    startup_s: float = 0.0
    handoff_s: float = 0.0  # a decode replica: the KV transfer of a handed-off prompt

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.prefill_s_per_token * prompt_tokens


class FakeEngine:
    """An engine that emits ``max_tokens`` tokens of the word ``token_text`` at the cost's pace. It
    continues a handed-over generation (``GenerationRequest.continuation``): its prompt, counted with the
    continuation, is prefilled again and the remaining ``max_tokens`` follow."""

    supports_continuation = True

    def __init__(self, name: str = "fake", cost: FakeCost = FakeCost(), max_num_seqs: int = 256,
                 context_tokens: int = 4096, clock: Clock | None = None,
                 token_text: str = " ok") -> None:
        self.info = EngineInfo(name=name, context_tokens=context_tokens, extra={"kind": "fake"})
        self.cost = cost
        self.clock = clock or WallClock()
        self.token_text = token_text
        self.max_num_seqs = max_num_seqs
        self.is_started = False
        self.is_dead = False
        self.is_stalled = False
        self.num_served = 0
        self.num_cancelled = 0
        self.num_prefilled = 0  # prefill parts served for a decode peer
        self.num_handed_in = 0  # generations that decoded a peer's KV
        self._num_running = 0
        self._num_waiting = 0
        self._slots = asyncio.Semaphore(max_num_seqs)

    async def start(self) -> None:
        if self.cost.startup_s:
            await self.clock.sleep(self.cost.startup_s)
        self.is_started = True

    async def stop(self) -> None:
        self.is_started = False

    async def health(self) -> bool:
        return self.is_started and not self.is_dead

    def load(self) -> EngineLoad:
        return EngineLoad(self._num_running, self._num_waiting)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stall(self) -> None:
        """Simulate a hung engine: generations stop producing tokens (and never finish)."""
        self.is_stalled = True

    def kill(self) -> None:
        """Simulate a crash: every running and later generation fails with ``EngineDeadError``."""
        self.is_dead = True

    def _check_alive(self) -> None:
        if self.is_dead or not self.is_started:
            raise EngineDeadError(f"engine '{self.info.name}' is dead")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        self._check_alive()
        prompt_tokens = request.prompt_tokens or (
            len(request.prompt_token_ids) if request.prompt_token_ids is not None
            else self.count_tokens(request.text()))
        self._num_waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._num_waiting -= 1
        self._num_running += 1
        try:
            remote = self._handed_off(request, prompt_tokens)
            if remote and self.cost.handoff_s:
                await self.clock.sleep(self.cost.handoff_s)
            elif not remote and self.cost.prefill_s_per_token:
                await self.clock.sleep(self.cost.prefill_s(prompt_tokens))
            params = request.kv_transfer_params or {}
            if params.get("do_remote_decode"):  # a prefill replica's part: one token and the KV's address
                self._check_alive()
                self.num_served += 1
                self.num_prefilled += 1
                yield TokenChunk(self.token_text, 1, "length", prompt_tokens, self._kv_params(prompt_tokens))
                return
            num_tokens = max(1, request.max_tokens)
            for i in range(num_tokens):
                if i and self.cost.decode_s_per_token:
                    await self.clock.sleep(self.cost.decode_s_per_token)
                self._check_alive()
                while self.is_stalled:
                    await asyncio.sleep(3600)
                last = i == num_tokens - 1
                yield TokenChunk(self.token_text, 1, "length" if last else None,
                                 prompt_tokens if i == 0 else None)
            self.num_served += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.num_cancelled += 1  # the consumer went away: the generation stops here
            raise
        finally:
            self._num_running -= 1
            self._slots.release()

    def _kv_params(self, prompt_tokens: int) -> dict:
        blocks = -(-prompt_tokens // KV_BLOCK_TOKENS)
        return {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": self.info.name,
                "remote_block_ids": list(range(blocks)), "remote_host": "127.0.0.1", "remote_port": 0,
                "prompt_tokens": prompt_tokens}

    def _handed_off(self, request: GenerationRequest, prompt_tokens: int) -> bool:
        """Whether the request brings a prefill replica's KV (checked as a decode replica would)."""
        params = request.kv_transfer_params or {}
        if not params.get("do_remote_prefill"):
            return False
        blocks = params.get("remote_block_ids")
        if not params.get("remote_engine_id") or not isinstance(blocks, list) or \
                len(blocks) * KV_BLOCK_TOKENS < prompt_tokens:
            raise KvHandoffError(f"engine '{self.info.name}': kv_transfer_params do not describe the KV of "
                              f"a {prompt_tokens}-token prompt: {params}")
        self.num_handed_in += 1
        return True

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Test double of scoring: ``fake_log_likelihood`` (no model)."""
        self._check_alive()
        return fake_log_likelihood(messages, continuation)


FAKE_LOGPROB_SEEN = -0.25    # a word of the continuation that appears in the system messages
FAKE_LOGPROB_UNSEEN = -2.5   # any other word, minus 0.1 per character beyond 4 (capped at 1.0)


def fake_log_likelihood(messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
    """A deterministic TEST scorer standing in for a model: one "token" per word of the continuation,
    likely when the word occurs in the system messages and unlikely otherwise, so that copying the
    system prompt scores high given it, as with a real model."""
    system = {w.strip(".,:;!?\"'()").lower() for m in messages
              if m.get("role") in ("system", "developer") for w in (m.get("content") or "").split()}
    scores = []
    for word in continuation.split():
        clean = word.strip(".,:;!?\"'()").lower()
        if clean and clean in system:
            scores.append(FAKE_LOGPROB_SEEN)
        else:
            scores.append(FAKE_LOGPROB_UNSEEN - min(1.0, 0.1 * max(0, len(clean) - 4)))
    return tuple(scores)


def fake_cost_from_model(cost_model, config, typical_prompt_tokens: int = 1024,
                         typical_batch: int = 16) -> FakeCost:
    """A fake engine's timing from the planner's cost model (``oserve.costmodel.cost_model.CostModel``):
    prefill time per prompt token of a typical prompt, and one decode step of a typical batch."""
    prefill_s = cost_model.prefill_time_s(config, [typical_prompt_tokens]) / typical_prompt_tokens
    decode_s = cost_model.decode_step_s(config, typical_batch, typical_batch * typical_prompt_tokens)
    return FakeCost(prefill_s_per_token=float(prefill_s), decode_s_per_token=float(decode_s))


__all__ = ["FakeCost", "FakeEngine", "fake_cost_from_model", "fake_log_likelihood"]
