"""The router: types each request on arrival, picks a replica by the plan, retries before the first token.

Typing is the planner's own online classifier (``RequestTypes.classify_online``, passed in as
``classifier``); the timeouts run on the injected clock.

Every request the router accepts ends in exactly one of: completed, failed with an explicit error. A
replica that dies before a request's first token is marked dead and the request is tried on another
replica (up to ``max_attempts``); after the first token a dead replica's generation cannot move, so it
fails with ``EngineDeadError`` and the gateway reports it. A switch may hand a running generation over
(``RoutedStream.hand_over``, on engines with ``supports_continuation``): the stream closes it on its
replica and continues it on another one chosen as for a new request, as a request of the prompt plus
the text already streamed and the tokens still to come (a recompute); the client sees one stream.

A request dispatched to a prefill replica of a disaggregated group takes two steps, as vLLM's
disaggregation proxy does: the prefill part (``max_tokens`` 1, ``kv_transfer_params``
``do_remote_decode``) on the prefill replica, then the request itself, with the KV transfer parameters
the prefill replica answered, on the least-loaded live decode replica of its group
(``planner.handoff_policy``), whose stream is the response. A prefill or decode replica that dies before
the first token is retried like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import numpy as np

from oserve.common.errors import ConfigError
from oserve.planner.dispatch_policy import DispatchState, DispatchTable
from oserve.planner.handoff_policy import least_loaded
from oserve.planner.plan import DECODE, PREFILL, Plan
from oserve.planner.spill_rule import PlanSpillRules, SpillRule
from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.dispatch_policy import Outcome, ReplicaView, choose
from oserve.runtime.engine import GenerationRequest, TokenChunk, estimate_tokens
from oserve.runtime.errors import (
    EngineBusyError,
    EngineDeadError,
    KvHandoffError,
    NoReplicaError,
    OverloadedError,
    ReplicaDrainingError,
)
from oserve.runtime.metrics import Metrics
from oserve.runtime.replica import ReplicaHandle, ReplicaState

Classifier = Callable[[int], int]  # prompt tokens -> request type, e.g. RequestTypes.classify_online
# what vLLM's disaggregation proxy sends a prefill replica (NixlConnector's request parameters)
HOLD_POLL_S = 0.05  # how often a held request looks again for a replica that takes work
REMOTE_DECODE = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                 "remote_block_ids": None, "remote_host": None, "remote_port": None}


@dataclass(frozen=True)
class RoutingTable:
    """A plan and the replica handles serving it, aligned with ``plan.replicas``."""

    version: int
    plan: Plan
    handles: tuple[ReplicaHandle, ...]

    def dispatch_table(self) -> DispatchTable:
        return DispatchTable.from_fractions(self.plan.dispatch)

    def type_name(self, type_index: int) -> str:
        names = self.plan.type_names
        return names[type_index] if 0 <= type_index < len(names) else f"T{type_index}"


class Router:
    def __init__(self, table: RoutingTable, metrics: Metrics, classifier: Classifier | None = None,
                 clock: Clock | None = None, max_attempts: int = 3,
                 dispatch_policy: str = "least-outstanding", seed: int = 0,
                 first_token_timeout_s: float = 600.0, token_timeout_s: float = 120.0,
                 spill_rule: SpillRule | PlanSpillRules | None = None) -> None:
        """``spill_rule``: the ``slo-spill`` rule over the table's replicas, or (``PlanSpillRules``) how to
        build it for each table's plan, so that a plan switch brings the rule of its own replicas."""
        if dispatch_policy == "slo-spill" and spill_rule is None:
            raise ConfigError("the slo-spill dispatch policy needs a spill rule (per-type SLOs, "
                              "per-replica step times: planner.spill_rule)")
        self._spill_rules: PlanSpillRules | None = None
        self.spill_rule: SpillRule | None = None  # aligned with the table's replicas
        if isinstance(spill_rule, PlanSpillRules):
            self._spill_rules = spill_rule
            self.spill_rule = spill_rule.rule_for(table.plan.configs())
        else:
            self.spill_rule = spill_rule
        self.table = table
        self._dispatch = (table.dispatch_table(), DispatchState.initial(table.dispatch_table()))
        self.metrics = metrics
        self.classifier = classifier
        self.clock = clock or WallClock()
        self.max_attempts = max_attempts
        self.dispatch_policy = dispatch_policy
        self.first_token_timeout_s = first_token_timeout_s  # a replica that stays silent this long
        self.token_timeout_s = token_timeout_s              # (or stalls mid-stream) counts as dead
        self.rng = np.random.default_rng(seed)  # used by the weighted-random policy only
        self.arrival_listeners: list[Callable[[int, float], None]] = []  # (type, arrival time)
        self.death_listeners: list[Callable[[ReplicaHandle], None]] = []  # a replica marked dead
        self.num_inflight = 0

    def set_table(self, table: RoutingTable, spill_rule: SpillRule | None = None) -> None:
        """Route by a new table; ``slo-spill`` takes the rule given, else the rule of the new plan's
        replicas when the router builds them (``PlanSpillRules``), else keeps its rule. A table of the
        same replicas and shares (a controller's hold that moved nothing) keeps the round-robin
        credits: starting them afresh would change every later tie-break for nothing."""
        dispatch = table.dispatch_table()
        if spill_rule is None and self._spill_rules is not None and table.plan is not self.table.plan:
            spill_rule = self._spill_rules.rule_for(table.plan.configs())
        if spill_rule is not None:
            self.spill_rule = spill_rule
        old, state = self._dispatch
        same = (table.handles == self.table.handles
                and np.shape(dispatch.weights) == np.shape(old.weights)
                and np.allclose(dispatch.weights, old.weights, rtol=0.0, atol=1e-9))
        self.table = table
        self._dispatch = (dispatch, state if same else DispatchState.initial(dispatch))

    def count_tokens(self, text: str) -> int:
        for handle in self.table.handles:
            if handle.state is ReplicaState.ACTIVE:
                return handle.engine.count_tokens(text)
        return estimate_tokens(text)

    def context_tokens(self) -> int:
        active = [h.engine.info.context_tokens for h in self.table.handles]
        return min(active) if active else 4096

    def classify(self, prompt_tokens: int) -> int:
        if self.classifier is None:
            return 0
        return min(int(self.classifier(prompt_tokens)), max(0, len(self.table.plan.type_names) - 1))

    async def open(self, request: GenerationRequest, type_index: int,
                   count_arrival: bool = True) -> RoutedStream:
        """Dispatch a typed request; returns once its first chunk is out (or raises a runtime error).
        ``count_arrival`` False: a handed-over generation, which the rate window saw when it arrived."""
        now_s = self.clock.now_s()
        if count_arrival:
            for listener in self.arrival_listeners:
                listener(type_index, now_s)
        tried: set[int] = set()
        died: list[str] = []
        busy: list[str] = []
        attempts = 0
        while attempts < self.max_attempts:
            await self._hold_while_starting(now_s)
            table, (dispatch, state) = self.table, self._dispatch
            views = [ReplicaView(i, h.is_accepting and id(h) not in tried, h.num_inflight,
                                 h.max_inflight, h.engine.load().num_waiting, h.prefill_tokens,
                                 h.num_decoding, h.num_downstream)
                     for i, h in enumerate(table.handles)]
            rule = self.spill_rule
            if rule is not None and len(rule.speeds) != len(views):
                rule = None  # a plan switch changed the fleet: least outstanding until a new rule
            decision, state = choose(dispatch, state, type_index, views, self.dispatch_policy, self.rng,
                                     rule, request.prompt_tokens)
            if table is self.table:
                self._dispatch = (dispatch, state)
            type_name = table.type_name(type_index)
            if decision.outcome is not Outcome.CHOSEN:
                self._reject(type_name, decision.outcome.value)
                self._raise_unavailable(decision.outcome, died, busy)
            handle = table.handles[decision.index]
            stream = RoutedStream(self, handle, type_name, request, now_s, type_index)
            try:
                await stream.start()
                if stream.is_movable:
                    handle.streams.add(stream)
                return stream
            except ReplicaDrainingError:  # a switch stopped its replica before its first token
                self.metrics.inc("oserve_rerouted_total", (("replica", handle.name),))
                continue
            except EngineDeadError as exc:
                attempts += 1
                failed = stream.handle  # the decode peer when the hand-off got that far
                if failed is handle:
                    tried.add(id(handle))
                (busy if isinstance(exc, EngineBusyError) else died).append(failed.name)
                self.metrics.inc("oserve_retries_total", (("replica", failed.name),))
        self._reject(self.table.type_name(type_index), "retries_exhausted")
        if busy and not died:
            raise OverloadedError(f"replicas {busy} are busy; retry later")
        raise NoReplicaError(f"replicas {died + busy} failed before answering; gave up after "
                             f"{self.max_attempts} attempts")

    async def _hold_while_starting(self, arrival_s: float) -> None:
        """While no replica takes work and a switch is starting the ones that will (the new replicas of
        a switch that replaced every replica start once the old ones have drained), hold the request,
        as the simulator's gateway holds arrivals until the join, instead of refusing it; for at most
        ``first_token_timeout_s`` (then the dispatch below refuses it with a 503)."""
        def waiting() -> bool:
            handles = self.table.handles
            return (not any(h.is_accepting for h in handles)
                    and any(h.state is ReplicaState.STARTING for h in handles))

        while waiting() and self.clock.now_s() - arrival_s < self.first_token_timeout_s:
            await self.clock.sleep(HOLD_POLL_S)

    @staticmethod
    def _raise_unavailable(outcome: Outcome, died: list[str], busy: list[str]) -> None:
        if outcome is Outcome.OVERLOADED or (busy and not died):
            raise OverloadedError("all replicas able to serve this request have full queues or are "
                                  "busy; retry later")
        raise NoReplicaError("no live replica can serve this request"
                             + (f" (replicas {died} died)" if died else ""))

    def _reject(self, type_name: str, reason: str) -> None:
        self.metrics.inc("oserve_rejected_total", (("type", type_name), ("reason", reason)))

    def decode_peer(self, prefill: ReplicaHandle) -> ReplicaHandle:
        """The least-loaded live decode replica of a prefill replica's group."""
        peers = [h for h in self.table.handles if h.replica.role == DECODE
                 and h.replica.group == prefill.replica.group and h.is_accepting]
        if not peers:
            raise EngineDeadError(f"no live decode replica in group {prefill.replica.group} of "
                                  f"{prefill.name}")
        return peers[least_loaded([h.num_inflight for h in peers])]

    def mark_dead(self, handle: ReplicaHandle) -> None:
        if handle.state is not ReplicaState.DEAD:
            handle.state = ReplicaState.DEAD
            self.metrics.inc("oserve_replica_deaths_total", (("replica", handle.name),))
            for listener in self.death_listeners:
                listener(handle)


async def _next_unless(gen: AsyncIterator[TokenChunk], event: asyncio.Event) -> TokenChunk | None:
    """``gen``'s next chunk, or None when ``event`` is set first: the wait for the chunk is then
    cancelled, which aborts the generation on its engine."""
    chunk = asyncio.ensure_future(gen.__anext__())
    fired = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({chunk, fired}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        fired.cancel()
        if not chunk.done():
            chunk.cancel()
            await asyncio.gather(chunk, return_exceptions=True)
    return None if chunk.cancelled() else chunk.result()


class RoutedStream:
    """One dispatched generation. Iterate it for chunks; it settles the request's accounting once."""

    def __init__(self, router: Router, handle: ReplicaHandle, type_name: str,
                 request: GenerationRequest, arrival_s: float, type_index: int = 0) -> None:
        self.router = router
        self.handle = handle
        self.type_name = type_name
        self.type_index = type_index
        self.request = request
        self.original = request  # what the client asked; a hand-over continues it
        self.arrival_s = arrival_s
        self.first: TokenChunk | None = None
        self.num_tokens = 0
        self.prompt_tokens = request.prompt_tokens
        self.finish_reason: str | None = None
        self._gen: AsyncIterator[TokenChunk] | None = None
        self._settled = False
        self._origin: ReplicaHandle | None = None  # the prefill replica of a handed-off request
        self._text: list[str] = []  # what was streamed, kept for a hand-over (movable streams only)
        self._move = asyncio.Event()  # set by ``hand_over``
        self.num_handovers = 0

    @property
    def is_movable(self) -> bool:
        """Whether a switch can hand this generation over: a colocated replica's engine that continues
        a generation (``supports_continuation``), no KV hand-off of disaggregation in it."""
        return (bool(getattr(self.handle.engine, "supports_continuation", False))
                and self.handle.replica.role not in (PREFILL, DECODE)
                and self.original.kv_transfer_params is None and self._origin is None)

    @property
    def remaining_tokens(self) -> int:
        """Tokens still to come at most (the request's ``max_tokens`` less those streamed)."""
        return max(0, self.original.max_tokens - self.num_tokens)

    def hand_over(self) -> None:
        """Continue this generation on another replica (the switch that stops its replica asks)."""
        self._move.set()

    @property
    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("type", self.type_name), ("replica", self.handle.name))

    async def _prefill_remotely(self) -> None:
        """The prefill part on this prefill replica; then hand the request to a decode peer."""
        prefill, router = self.handle, self.router
        prefill.num_inflight += 1
        gen = prefill.engine.generate(replace(self.request, max_tokens=1, kv_transfer_params=REMOTE_DECODE))
        params = None
        try:
            async with router.clock.timeout(router.first_token_timeout_s):
                async for chunk in gen:
                    params = chunk.kv_transfer_params or params
        except TimeoutError as exc:
            router.mark_dead(prefill)
            raise EngineDeadError(f"prefill replica {prefill.name} gave no answer within "
                                  f"{router.first_token_timeout_s:g} s") from exc
        except EngineBusyError:
            raise
        except EngineDeadError:
            router.mark_dead(prefill)
            raise
        finally:
            prefill.num_inflight -= 1
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()
        if not params:
            raise KvHandoffError(f"prefill replica {prefill.name} returned no kv_transfer_params")
        self.handle = router.decode_peer(prefill)
        self.request = replace(self.request, kv_transfer_params=params)
        self._origin = prefill
        prefill.num_downstream += 1  # until released: the dispatch counts it on the prefill replica

    async def start(self) -> None:
        if self.handle.replica.role == PREFILL:
            try:
                await self._prefill_remotely()
            except EngineDeadError:
                raise  # retried on another replica
            except asyncio.CancelledError:
                self._settle("cancelled")
                raise
            except BaseException:
                self._settle("error")
                raise
        self.handle.num_inflight += 1
        self.router.num_inflight += 1
        prefill = self.request.prompt_tokens
        self.handle.prefill_tokens += prefill  # until the first token: what slo-spill predicts from
        self.handle.num_prefilling += 1
        self._gen = gen = self.handle.engine.generate(self.request)
        try:
            await self._first_token(gen)
        finally:
            self.handle.prefill_tokens -= prefill
            self.handle.num_prefilling -= 1

    async def _first_token(self, gen: AsyncIterator[TokenChunk]) -> None:
        try:
            async with self.router.clock.timeout(self.router.first_token_timeout_s):
                self.first = await self._first_chunk(gen)
        except StopAsyncIteration:
            self.first = None
        except ReplicaDrainingError:
            await self._release()
            raise
        except TimeoutError as exc:
            self.router.mark_dead(self.handle)
            await self._release()
            raise EngineDeadError(f"replica {self.handle.name} gave no first token within "
                                  f"{self.router.first_token_timeout_s:g} s") from exc
        except EngineBusyError:
            await self._release()
            raise
        except EngineDeadError:
            self.router.mark_dead(self.handle)
            await self._release()
            raise
        except asyncio.CancelledError:
            self._settle("cancelled")  # the client went away while the request waited
            await self._release()
            raise
        except BaseException:
            self._settle("error")
            await self._release()
            raise
        if not self.request.continued_tokens:  # a continuation's first chunk is not the request's
            ttft_s = self.router.clock.now_s() - self.arrival_s
            self.router.metrics.observe("oserve_ttft_seconds", self.labels, ttft_s)

    async def _first_chunk(self, gen: AsyncIterator[TokenChunk]) -> TokenChunk:
        """The engine's first chunk, unless the replica starts draining before it comes: then the
        generation is cancelled (no token has reached the client) and ``ReplicaDrainingError`` sends the
        request back to the router, as the simulator re-routes a stopping replica's queue."""
        drain = self.handle.drain_started
        if drain.is_set():
            raise ReplicaDrainingError(f"replica {self.handle.name} is draining")
        chunk = await _next_unless(gen, drain)
        if chunk is None:
            raise ReplicaDrainingError(f"replica {self.handle.name} began draining before the first "
                                       "token; dispatched again")
        return chunk

    def _note(self, chunk: TokenChunk) -> None:
        self.num_tokens += chunk.num_tokens
        if self.is_movable:
            self._text.append(chunk.text)
        if chunk.prompt_tokens is not None and not self.request.continued_tokens:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    async def __aiter__(self) -> AsyncIterator[TokenChunk]:
        try:
            if self.first is not None:
                self._note(self.first)
                yield self.first
                while True:
                    try:
                        gen = self._gen
                        assert gen is not None  # start() set it when it took self.first
                        async with self.router.clock.timeout(self.router.token_timeout_s):
                            chunk = await self._next_chunk(gen)
                    except StopAsyncIteration:
                        break
                    except TimeoutError as exc:
                        raise EngineDeadError(f"stalled: no token for {self.router.token_timeout_s:g} s"
                                              ) from exc
                    if chunk is None:  # handed over: the first chunk of its continuation
                        chunk = await self._continue_elsewhere()
                        if chunk is None:
                            break
                    self._note(chunk)
                    yield chunk
            self._settle("ok")
        except EngineDeadError as exc:
            self.router.mark_dead(self.handle)
            self._settle("engine_dead")
            raise EngineDeadError(f"replica {self.handle.name} died after {self.num_tokens} tokens of "
                                  f"this request; it cannot be resumed ({exc})") from exc
        except (asyncio.CancelledError, GeneratorExit):
            self._settle("cancelled")  # the client went away
            raise
        except BaseException:
            self._settle("error")
            raise
        finally:
            await self._release()

    async def _next_chunk(self, gen: AsyncIterator[TokenChunk]) -> TokenChunk | None:
        """The engine's next chunk, or None once the stream is to be handed over (``hand_over``): the
        wait for the chunk is cancelled, which aborts the generation on its replica."""
        if not self.is_movable:
            return await gen.__anext__()
        if self._move.is_set():
            return None
        return await _next_unless(gen, self._move)

    async def _continue_elsewhere(self) -> TokenChunk | None:
        """Close the generation here and dispatch what is left of it (the prompt plus the text streamed,
        ``max_tokens`` less the tokens streamed) as the router dispatches a request; returns the first
        chunk of the continuation, None when nothing was left or it gave none."""
        left = self.remaining_tokens
        source = self.handle
        self._move.clear()
        await self._release()
        if left <= 0:
            return None
        self.num_handovers += 1
        self.router.metrics.inc("oserve_handed_over_total", (("replica", source.name),))
        base = self.original
        cont = replace(base, request_id=f"{base.request_id}+{self.num_tokens}", max_tokens=left,
                       prompt_tokens=(base.prompt_tokens or self.prompt_tokens) + self.num_tokens,
                       continuation=base.continuation + "".join(self._text),
                       continued_tokens=base.continued_tokens + self.num_tokens)
        new = await self.router.open(cont, self.type_index, count_arrival=False)
        # this stream carries on with the new generation; the accounting stays this stream's
        new.handle.streams.discard(new)
        new._settled = True
        self.handle, self._gen, self.request = new.handle, new._gen, cont
        new._gen = None
        self.handle.streams.add(self)
        return new.first

    def _settle(self, status: str) -> None:
        if self._settled:
            return
        self._settled = True
        metrics = self.router.metrics
        metrics.inc("oserve_requests_total", self.labels + (("status", status),))
        if status == "ok":
            self.handle.num_served += 1
            metrics.inc("oserve_generated_tokens_total", self.labels, self.num_tokens)
            metrics.observe("oserve_request_latency_seconds", self.labels,
                            self.router.clock.now_s() - self.arrival_s)
        else:
            self.handle.num_failed += 1

    async def _release(self) -> None:
        if self._origin is not None:
            self._origin.num_downstream -= 1
            self._origin = None
        self.handle.streams.discard(self)
        if self._gen is None:
            return
        gen, self._gen = self._gen, None
        self.handle.num_inflight -= 1
        self.router.num_inflight -= 1
        aclose = getattr(gen, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # noqa: BLE001 - closing a dead engine's stream must not mask the result
                pass

    async def aclose(self) -> None:
        """Settle and release a stream the caller abandons (client went away)."""
        self._settle("cancelled")
        await self._release()


__all__ = ["Classifier", "RoutedStream", "Router", "RoutingTable"]
