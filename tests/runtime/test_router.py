"""Router: typing, retry before the first token, explicit failures, bounded queues (in-process)."""

from __future__ import annotations

import asyncio

import pytest

from oserve.common.errors import ConfigError
from oserve.planner.spill_rule import ReplicaSpeed, SpillRule
from oserve.runtime.clock import ManualClock
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.errors import EngineDeadError, NoReplicaError, OverloadedError
from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.replica import ReplicaState
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.workload.slo import Slo

from .factories import FakeFleet, make_plan, make_runtime, run_clock, settle, split_by_length


def request(max_tokens: int = 4, prompt: str = "hi") -> GenerationRequest:
    return GenerationRequest("req", max_tokens, prompt=prompt, prompt_tokens=len(prompt) // 4 + 1)


async def collect(runtime, req, type_index=0) -> str:
    stream = await runtime.router.open(req, type_index)
    try:
        return "".join([c.text async for c in stream])
    finally:
        await stream.aclose()


def test_requests_are_typed_and_counted_per_type_and_replica():
    async def main():
        runtime, _ = make_runtime()
        async with runtime:
            router = runtime.router
            assert router.classify(10) == 0 and router.classify(500) == 1
            await collect(runtime, request(), router.classify(10))
            await collect(runtime, request(), router.classify(500))
        return runtime.metrics

    metrics = asyncio.run(main())
    assert metrics.counter("oserve_requests_total", type="short", status="ok") == 1
    assert metrics.counter("oserve_requests_total", type="long", status="ok") == 1


def test_dead_replica_before_first_token_is_retried_elsewhere():
    async def main():
        runtime, fleet = make_runtime(dispatch=[[1.0, 0.0], [1.0, 0.0]])
        async with runtime:
            fleet.engines[0].kill()  # crashed, but the router has not noticed yet
            text = await collect(runtime, request(3))
            # r0 is marked dead, or the controller has already restarted it (a fresh engine) while r1
            # streamed (the stream yields to the event loop between chunks)
            r0, r1 = runtime.router.table.handles
            states = (r0.state is ReplicaState.DEAD or r0.engine is not fleet.engines[0], r1.state)
        return text, states, runtime.metrics

    text, states, metrics = asyncio.run(main())
    assert text == " ok" * 3
    assert states == (True, ReplicaState.ACTIVE)
    assert metrics.counter("oserve_retries_total", replica="r0") == 1
    assert metrics.counter("oserve_replica_deaths_total") == 1
    assert metrics.counter("oserve_requests_total", replica="r1", status="ok") == 1


def test_every_replica_dead_is_an_explicit_no_replica_error():
    async def main():
        runtime, fleet = make_runtime()
        async with runtime:
            for engine in fleet.engines:
                engine.kill()
            with pytest.raises(NoReplicaError, match="died"):
                await collect(runtime, request())
            with pytest.raises(NoReplicaError, match="no live replica"):
                await collect(runtime, request())
        return runtime.metrics

    metrics = asyncio.run(main())
    assert metrics.counter("oserve_rejected_total") == 2


def test_death_after_first_token_fails_the_request_explicitly():
    async def main():
        runtime, fleet = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.01))
        async with runtime:
            stream = await runtime.router.open(request(50), 0)
            chunks = []
            with pytest.raises(EngineDeadError, match="died after"):
                async for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) == 3:
                        fleet.engines[0].kill()
            await stream.aclose()
            assert runtime.router.num_inflight == 0
        return runtime.metrics

    metrics = asyncio.run(main())
    assert metrics.counter("oserve_requests_total", status="engine_dead") == 1


def test_full_queues_are_rejected_as_overloaded():
    async def main():
        config = RuntimeConfig(max_inflight_per_replica=1)
        runtime, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.01), config=config)
        async with runtime:
            first = await runtime.router.open(request(20), 0)
            with pytest.raises(OverloadedError):
                await runtime.router.open(request(20), 0)
            await first.aclose()
            await collect(runtime, request(2))  # the slot is free again

    asyncio.run(main())


def test_a_silent_replica_is_timed_out_on_the_injected_clock_and_the_request_retried_elsewhere():
    async def main():
        clock = ManualClock()
        config = RuntimeConfig(first_token_timeout_s=5.0)
        runtime, fleet = make_runtime(dispatch=[[1.0, 0.0], [1.0, 0.0]], config=config, clock=clock)
        await runtime.controller.start()
        fleet.engines[0].stall()
        task = asyncio.create_task(collect(runtime, request(2)))
        await asyncio.sleep(0.05)  # wall time passes, the injected clock does not: still waiting
        waiting = not task.done()
        clock.advance(4.9)
        await settle()
        still_waiting = not task.done()
        clock.advance(0.2)  # past the 5 s first-token timeout
        text = await asyncio.wait_for(task, 2.0)  # well before the timeout in wall time
        state = runtime.router.table.handles[0].state
        await runtime.stop()
        return waiting, still_waiting, text, state, runtime.metrics

    waiting, still_waiting, text, state, metrics = asyncio.run(main())
    assert waiting and still_waiting
    assert text == " ok" * 2 and state is ReplicaState.DEAD
    assert metrics.counter("oserve_retries_total", replica="r0") == 1


def test_a_stream_that_stalls_fails_explicitly_after_the_token_timeout():
    async def main():
        clock = ManualClock()
        config = RuntimeConfig(token_timeout_s=3.0)
        runtime, fleet = make_runtime(num_replicas=1, config=config, clock=clock)
        await runtime.controller.start()
        stream = await runtime.router.open(request(50), 0)
        chunks = []

        async def consume():
            async for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 3:
                    fleet.engines[0].stall()

        task = asyncio.create_task(consume())
        await settle()
        stalled_at = len(chunks)
        clock.advance(2.9)
        await settle()
        alive = not task.done()
        clock.advance(0.2)
        with pytest.raises(EngineDeadError, match="stalled"):
            await asyncio.wait_for(task, 2.0)  # well before the timeout in wall time
        await stream.aclose()
        inflight = runtime.router.num_inflight
        await runtime.stop()
        return stalled_at, alive, inflight, runtime.metrics

    stalled_at, alive, inflight, metrics = asyncio.run(main())
    assert stalled_at == 3 and alive
    assert inflight == 0 and metrics.counter("oserve_requests_total", status="engine_dead") == 1


def test_slo_spill_counts_prefill_backlog_and_spills_a_request_the_primary_would_keep_too_long():
    """The runtime's slo-spill: a replica's prompt tokens without a first token are its prefill backlog
    (as the simulator's replicas count theirs), and with a long prompt prefilling on the only planned
    replica the next request goes to the other one."""
    speed = ReplicaSpeed(1000, 8, 0.01, 0.001, 1e-4)  # 20,000 queued tokens: ~2.2 s to a first token
    rule = SpillRule((Slo(1.0, 0.1), Slo(1.0, 0.1)), (speed, speed))
    clock = ManualClock()

    async def main():
        fleet = FakeFleet(FakeCost(prefill_s_per_token=0.001), clock=clock)
        runtime = ServingRuntime("fake-model", make_plan(2, [[1.0, 0.0], [1.0, 0.0]]), fleet,
                                 split_by_length, config=RuntimeConfig(dispatch_policy="slo-spill"),
                                 clock=clock, spill_rule=rule)
        async with runtime:
            handles = runtime.router.table.handles
            big = GenerationRequest("big", 2, prompt="x", prompt_tokens=20000)
            first = asyncio.ensure_future(runtime.router.open(big, 1))
            await settle()
            backlog = (handles[0].prefill_tokens, handles[0].num_prefilling, handles[0].num_decoding)
            small = asyncio.ensure_future(runtime.router.open(
                GenerationRequest("small", 2, prompt="x", prompt_tokens=100), 0))
            await settle()
            clock.advance(25.0)
            await settle()
            streams = [await first, await small]
            where = [s.handle.name for s in streams]
            for s in streams:
                await s.aclose()
            after = [(h.prefill_tokens, h.num_prefilling) for h in handles]
        return backlog, where, after

    backlog, where, after = asyncio.run(main())
    assert backlog == (20000, 1, 0)
    assert where == ["r0", "r1"]  # the planned replica for the big prompt, the spill for the small one
    assert after == [(0, 0), (0, 0)]


def test_slo_spill_without_a_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="spill rule"):
        make_runtime(config=RuntimeConfig(dispatch_policy="slo-spill"))


def test_a_table_of_the_same_replicas_and_shares_keeps_the_round_robin_credits():
    """Regression: a controller's hold re-installs the table it re-dispatched; with identical shares that
    reset the credits, so the next tie went to the first replica again instead of alternating."""
    from oserve.runtime.router import RoutingTable

    async def main():
        runtime, _ = make_runtime()
        async with runtime:
            router = runtime.router
            await collect(runtime, request())  # outstanding ties at 0: the credits choose
            table = router.table
            router.set_table(RoutingTable(table.version, table.plan, table.handles))
            kept = router._dispatch[1]
            uneven = [[0.75, 0.25], [0.75, 0.25]]
            router.set_table(RoutingTable(table.version, make_plan(2, uneven), table.handles))
            reset = router._dispatch[1]
        return kept, reset

    kept, reset = asyncio.run(main())
    assert any(c != 0.0 for row in kept.credits for c in row)  # one request's credit is still there
    assert all(c == 0.0 for row in reset.credits for c in row)  # other shares: afresh


def test_a_request_is_held_while_the_only_replicas_are_starting_not_refused():
    """A switch that replaces every replica starts the new ones after the old have drained: a request
    arriving meanwhile waits for them (as the simulator's gateway holds arrivals until the join) instead
    of a 503; with nothing starting it is refused at once, and a hold ends at the first-token timeout."""
    async def main():
        clock = ManualClock()
        runtime, _ = make_runtime(num_replicas=1, clock=clock,
                                  config=RuntimeConfig(first_token_timeout_s=30.0))
        async with runtime:
            handle = runtime.router.table.handles[0]
            handle.state = ReplicaState.STARTING  # as in the table of such a switch
            task = asyncio.create_task(collect(runtime, request(2)))
            await run_clock(clock, lambda: clock.now_s() >= 5.0, step_s=0.05)
            held = not task.done()
            handle.state = ReplicaState.ACTIVE
            await run_clock(clock, task.done, step_s=0.05)
            text = task.result()
            handle.state = ReplicaState.STARTING
            late = asyncio.create_task(collect(runtime, request(2)))
            await run_clock(clock, late.done, step_s=0.5)
            late_error, late_s = late.exception(), clock.now_s()
            handle.state = ReplicaState.DEAD
            with pytest.raises(NoReplicaError):
                await collect(runtime, request(2))
        return held, text, late_error, late_s

    held, text, late_error, late_s = asyncio.run(main())
    assert held and text == " ok" * 2
    assert isinstance(late_error, NoReplicaError) and 30.0 <= late_s - 5.0 <= 32.0


def test_a_handed_over_stream_continues_on_another_replica_with_the_tokens_left():
    """A switch hands a running generation over (``RoutedStream.hand_over``): the client's one stream
    gets every token once; the second replica is asked for the prompt plus the text streamed and the
    tokens left (a recompute); TTFT and the arrival are counted once."""
    async def main():
        clock = ManualClock()
        runtime, fleet = make_runtime(cost=FakeCost(decode_s_per_token=0.01),
                                      dispatch=[[1.0, 0.0], [1.0, 0.0]], clock=clock)
        arrivals: list[int] = []
        asked: list[GenerationRequest] = []
        async with runtime:
            runtime.router.arrival_listeners.append(lambda t, _s: arrivals.append(t))
            second = fleet.engines[1]
            generate = second.generate

            def recording(req):
                asked.append(req)
                return generate(req)

            second.generate = recording
            stream = await runtime.router.open(GenerationRequest("h", 20, prompt="x" * 40,
                                                                 prompt_tokens=10), 0)
            chunks = []
            consumer = asyncio.ensure_future(_consume(stream, chunks))
            await run_clock(clock, lambda: len(chunks) >= 5)
            first = runtime.router.table.handles[0]
            first.start_draining()  # a switch stops it: nothing new goes there
            stream.hand_over()
            await run_clock(clock, consumer.done)
            ttfts = sum(h.num for (name, _), h in runtime.metrics.histograms.items()
                        if name == "oserve_ttft_seconds")
        return chunks, asked, arrivals, fleet, runtime.metrics, ttfts, stream

    chunks, asked, arrivals, fleet, metrics, ttfts, stream = asyncio.run(main())
    assert "".join(chunks) == " ok" * 20  # every token once, in one stream
    assert len(asked) == 1
    cont = asked[0]
    done = 20 - cont.max_tokens
    assert 5 <= done < 20 and cont.prompt_tokens == 10 + done
    assert cont.continuation == " ok" * done and cont.continued_tokens == done
    assert fleet.engines[0].num_cancelled == 1 and fleet.engines[1].num_served == 1
    assert arrivals == [0] and ttfts == 1 and stream.num_handovers == 1
    assert metrics.counter("oserve_handed_over_total", replica="r0") == 1
    assert metrics.counter("oserve_requests_total", status="ok") == 1


async def _consume(stream, chunks: list[str]) -> None:
    try:
        async for chunk in stream:
            chunks.append(chunk.text)
    finally:
        await stream.aclose()
