"""TEST DOUBLE of an engine: the simulator's replica model, run on the server's clock.

``SimTimedEngine`` implements the runtime's ``Engine`` protocol with no model behind it. Its service is
``oserve.sim.replica.ReplicaSim`` (vLLM-style chunked-prefill batching over the replica's KV blocks,
step times from the calibrated cost model), driven in real time: each request joins the replica at the
clock's now, and the replica's step ends are awaited on the clock. So a server on these engines serves a
request as the simulator would on the same replica, and what the server adds (HTTP, typing, dispatch,
the controller's measured windows and switches) is what a comparison with the simulator measures.

A generation yields the first token when the replica's step that completes its prefill ends, then the
tokens produced so far every ``progress_s`` of the clock (2 s: what the router knows of a generation
when a switch hands it over to another replica), and the rest when its last decode step ends (an event
per token would swamp the gateway at a compressed clock). A handed-over generation
(``GenerationRequest.continuation``, ``supports_continuation``) is a request of the prompt plus the
tokens already streamed, which the replica model prefills again (a recompute, as the simulator's).
Step ends are applied at the times the replica model computed, not when the event loop got to them, so a
late wake-up of the loop delays a token's delivery but never the replica's schedule. A consumer that
goes away (a client that hung up, or the router taking back a request a switch re-routes) aborts its
sequence, as vLLM aborts a request: a waiting one leaves the queue, a running one leaves at the next
step boundary with its KV freed.

Lives in tests: the runtime never imports the simulator (tests/test_layering.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from oserve.costmodel.cost_model import CostModel
from oserve.planner.plan import Replica
from oserve.runtime.clock import Clock
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk, estimate_tokens
from oserve.runtime.errors import EngineDeadError
from oserve.sim.api import batching_config
from oserve.sim.config import SimConfig
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.replica import ReplicaSim
from oserve.sim.request import Seq
from oserve.sim.simulator import replicas_from_configs

TOKEN_TEXT = " ok"


class SimTimedEngine:
    """One replica of ``replica.config`` timed by ``cost`` on ``clock`` (see the module docstring)."""

    supports_continuation = True

    def __init__(self, replica: Replica, cost: CostModel, clock: Clock, startup_s: float = 0.0,
                 sim_config: SimConfig = SimConfig(), timers: dict | None = None,
                 progress_s: float = 2.0) -> None:
        (setup,) = replicas_from_configs([replica.config], cost, timers)
        batching = setup.batching(batching_config(cost, sim_config), sim_config.watermark_frac)
        self.replica_sim = ReplicaSim(0, setup.timer, BlockPool(setup.kv_blocks, cost.params.kv_block_tokens),
                                      batching, sim_config.util_bin_s)
        self.info = EngineInfo(f"sim-timed r{replica.replica_id} {replica.config.label()}",
                               cost.model.max_context_tokens, {"kind": "sim-timed test double"})
        self.clock = clock
        self.startup_s = startup_s
        self.progress_s = progress_s
        self.is_started = False
        self.started_at_s: float | None = None  # when it began to start, and when it stopped (tests)
        self.stopped_at_s: float | None = None
        self.num_admitted = 0   # generations that reached the replica model
        self.num_completed = 0  # generations that yielded their last token
        self.num_aborted = 0    # generations their consumer abandoned (e.g. re-routed by a switch)
        self.max_lag_s = 0.0    # the latest a step end was applied after its time (event-loop lag)
        self._next_req_id = 0
        self._next_end_s: float | None = None  # the replica model's step end in flight
        self._waiters: dict[int, tuple[asyncio.Future, asyncio.Future]] = {}  # first token, last token
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task | None = None

    async def start(self) -> None:
        self.started_at_s = self.clock.now_s()
        if self.startup_s > 0:
            await self.clock.sleep(self.startup_s)
        self._wake = asyncio.Event()
        self._driver = asyncio.create_task(self._drive())
        self.is_started = True

    async def stop(self) -> None:
        self.is_started = False
        self.stopped_at_s = self.clock.now_s()
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
        for first, last in self._waiters.values():
            for future in (first, last):
                if not future.done():
                    future.set_exception(EngineDeadError(f"engine '{self.info.name}' stopped"))
        self._waiters.clear()

    async def health(self) -> bool:
        return self.is_started

    def load(self) -> EngineLoad:
        rep = self.replica_sim
        return EngineLoad(rep.num_outstanding - len(rep.waiting), len(rep.waiting))

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if not self.is_started:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        prompt_tokens = request.prompt_tokens or self.count_tokens(request.text())
        output_tokens = max(1, request.max_tokens)
        loop = asyncio.get_running_loop()
        first, last = loop.create_future(), loop.create_future()
        now_s = self.clock.now_s()
        self._advance(now_s)  # the model must be at now before it sees the arrival
        seq = Seq(self._next_req_id, 0, prompt_tokens, output_tokens)
        self._next_req_id += 1
        self._waiters[seq.req_id] = (first, last)
        self.num_admitted += 1
        end_s = self.replica_sim.on_arrival(seq, now_s)
        if end_s is not None:
            self._set_next_end(end_s)
        try:
            await first
            yield TokenChunk(TOKEN_TEXT, 1, "length" if output_tokens == 1 else None, prompt_tokens)
            sent = 1
            while sent < output_tokens:
                try:
                    async with self.clock.timeout(self.progress_s):
                        await asyncio.shield(last)
                except TimeoutError:
                    n = self.replica_sim.generated_tokens(seq) - sent
                    if n > 0 and not last.done():
                        sent += n
                        yield TokenChunk(TOKEN_TEXT * n, n)
                    continue
                yield TokenChunk(TOKEN_TEXT * (output_tokens - sent), output_tokens - sent, "length")
                sent = output_tokens
        except (asyncio.CancelledError, GeneratorExit):
            self._abort(seq)
            raise
        self.num_completed += 1

    def _abort(self, seq: Seq) -> None:
        self.num_aborted += 1
        if self._waiters.pop(seq.req_id, None) is None:
            return  # already finished in the model
        rep = self.replica_sim
        if seq in rep.waiting:
            rep.waiting.remove(seq)
        elif self.is_started:
            end_s = rep.extract([seq.req_id], self.clock.now_s())
            if end_s is not None:
                self._set_next_end(end_s)

    def _set_next_end(self, end_s: float | None) -> None:
        self._next_end_s = end_s
        if self._wake is not None:
            self._wake.set()

    def _advance(self, now_s: float) -> None:
        """Apply every step end of the replica model up to ``now_s``, at the times it computed."""
        rep = self.replica_sim
        while self._next_end_s is not None and self._next_end_s <= now_s:
            first, finished, self._next_end_s = rep.on_step_end(self._next_end_s)
            rep.take_extracted()  # aborted sequences, gone
            for seq in first:
                self._resolve(seq.req_id, 0)
            for seq in finished:
                self._resolve(seq.req_id, 0)  # a one-token request finishes in its first step
                self._resolve(seq.req_id, 1)
                self._waiters.pop(seq.req_id, None)

    def _resolve(self, req_id: int, which: int) -> None:
        futures = self._waiters.get(req_id)
        if futures is not None and not futures[which].done():
            futures[which].set_result(None)

    async def _drive(self) -> None:
        """Sleep on the clock until the next step end (or an arrival that moved it), then apply it."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            if self._next_end_s is None:
                await self._wake.wait()
                continue
            delay_s = self._next_end_s - self.clock.now_s()
            if delay_s > 0:
                try:
                    async with self.clock.timeout(delay_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            now_s = self.clock.now_s()
            self.max_lag_s = max(self.max_lag_s, now_s - self._next_end_s)
            self._advance(now_s)


__all__ = ["SimTimedEngine"]
