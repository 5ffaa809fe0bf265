"""Reliability under load over real HTTP: a replica killed mid-load, a plan switched mid-load.

Every request sent is classified: completed in full, or failed with an explicit error (an HTTP error
with an OpenAI error body, or an error event inside the stream). A request that vanishes (connection
dropped, truncated stream without an error, timeout) counts as lost; the tests require zero lost.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.gateway.app import create_app
from oserve.runtime.server import ServerThread
from oserve.runtime.serving import RuntimeConfig
from oserve.runtime.static_plan import static_plan

from .factories import MODEL, TYPE_NAMES, make_runtime
from .load_client import chat_outcome, count_outcomes

NUM_TOKENS = 20


async def one_request(client: httpx.AsyncClient, i: int, stream: bool) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (8 if i % 2 else 800)}],
            "max_tokens": NUM_TOKENS, "stream": stream}
    return await chat_outcome(client, body, lambda text: text == " ok" * NUM_TOKENS)


async def load(base_url: str, num_requests: int, during=None) -> dict[str, int]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as client:
        tasks = []
        for i in range(num_requests):
            tasks.append(asyncio.create_task(one_request(client, i, stream=i % 3 != 0)))
            await asyncio.sleep(0.002)
            if during is not None and i == num_requests // 3:
                await asyncio.to_thread(during)
        return count_outcomes(await asyncio.gather(*tasks))


def test_killing_a_replica_under_load_loses_no_request():
    runtime, fleet = make_runtime(num_replicas=3, cost=FakeCost(decode_s_per_token=0.003),
                                  config=RuntimeConfig(max_inflight_per_replica=500))
    with ServerThread(create_app(runtime)) as server:
        counts = asyncio.run(load(server.base_url, 240, during=fleet.engines[1].kill))
    assert counts["lost"] == 0, counts
    assert counts["completed"] + counts["error"] == 240
    assert counts["completed"] >= 150  # only requests already streaming on the dead replica fail
    failed_in_server = runtime.metrics.counter("oserve_requests_total", status="engine_dead")
    assert counts["error"] == failed_in_server  # every failure the client saw is counted as one
    assert runtime.metrics.counter("oserve_replica_deaths_total") == 1


def test_plan_switch_under_load_over_http_loses_no_request():
    runtime, fleet = make_runtime(num_replicas=2, cost=FakeCost(decode_s_per_token=0.003),
                                  config=RuntimeConfig(max_inflight_per_replica=500))
    new_plan = static_plan(MODEL, [ReplicaConfig("cpu", tp=2), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                           [[0.5, 0.5], [0.5, 0.5]], (1.0, 1.0))
    with ServerThread(create_app(runtime)) as server:
        pending = []

        def switch() -> None:  # start the switch and keep sending while it starts, drains, stops
            pending.append(asyncio.run_coroutine_threadsafe(
                runtime.controller.apply(new_plan, "switch under load"), server.loop))

        counts = asyncio.run(load(server.base_url, 200, during=switch))
        pending[0].result(timeout=30)
        admin = httpx.get(server.base_url + "/admin/plan").json()
    assert counts == {"completed": 200, "error": 0, "lost": 0}
    assert admin["plan_version"] == 2 and admin["plan"]["deployment"] == "2x[cpu TP2]"
    assert len(fleet.engines) == 4 and all(not e.is_started for e in fleet.engines[:2])


def test_a_client_that_goes_away_mid_stream_frees_its_slot():
    import time

    runtime, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.01))
    with ServerThread(create_app(runtime)) as server:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500,
                "stream": True}
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
            next(response.iter_lines())  # one event, then hang up
        deadline = time.monotonic() + 10
        while runtime.router.num_inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runtime.router.num_inflight == 0
        assert runtime.router.table.handles[0].num_inflight == 0
    assert runtime.metrics.counter("oserve_requests_total", status="cancelled") == 1


def _wait_until(condition, timeout_s: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_hang_up_mid_stream_does_not_wedge_a_one_at_a_time_engine():
    """Issue 9 item 1 on the fake engine: one sequence at a time, like llama.cpp on CPU."""
    import time

    runtime, fleet = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.01),
                                  max_num_seqs=1)
    with ServerThread(create_app(runtime)) as server:
        engine = fleet.engines[0]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 256,
                "stream": True}
        with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as response:
            next(response.iter_bytes(300))  # about 300 bytes, then hang up (curl ... | head -c 300)
        start = time.monotonic()
        reply = httpx.post(server.base_url + "/v1/chat/completions", timeout=10,
                           json={**body, "stream": False, "max_tokens": 4})
        assert reply.status_code == 200 and time.monotonic() - start < 2.0
        assert _wait_until(lambda: engine.num_cancelled == 1)
    assert runtime.metrics.counter("oserve_requests_total", status="cancelled") == 1


def test_an_abandoned_non_streamed_request_is_cancelled_in_the_engine():
    """Issue 9 item 3: a client that times out no longer holds the replica to the end."""
    import time

    runtime, fleet = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.02),
                                  max_num_seqs=1)
    with ServerThread(create_app(runtime)) as server:
        engine = fleet.engines[0]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
        try:  # 500 tokens take 10 s; the client gives up after 0.5 s
            httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=0.5)
        except httpx.ReadTimeout:
            pass
        assert _wait_until(lambda: runtime.router.num_inflight == 0, 3.0)
        start = time.monotonic()
        reply = httpx.post(server.base_url + "/v1/chat/completions", timeout=10,
                           json={**body, "max_tokens": 4})
        assert reply.status_code == 200 and time.monotonic() - start < 2.0
    assert engine.num_cancelled == 1 and engine.num_served == 1
    assert runtime.metrics.counter("oserve_requests_total", status="cancelled") == 1
    assert runtime.metrics.counter("oserve_requests_total", status="ok") == 1


def test_graceful_shutdown_ends_unfinished_requests_explicitly(caplog):
    """Issue 9 item 6: within the grace period requests finish; after it a stream gets an SSE error
    event and a whole response a 503, both in the OpenAI error shape, with no traceback logged."""
    import concurrent.futures
    import logging
    import time

    config = RuntimeConfig(shutdown_grace_s=1.0)
    runtime, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.02), config=config)
    server = ServerThread(create_app(runtime)).__enter__()
    url = server.base_url + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

    def streamed() -> list[str]:
        with httpx.stream("POST", url, json={**body, "max_tokens": 1000, "stream": True},
                          timeout=30) as response:
            return [line for line in response.iter_lines() if line.startswith("data: ")]

    with caplog.at_level(logging.INFO), concurrent.futures.ThreadPoolExecutor(4) as pool:
        long_stream = pool.submit(streamed)
        long_whole = pool.submit(httpx.post, url, json={**body, "max_tokens": 1000}, timeout=30)
        short_whole = pool.submit(httpx.post, url, json={**body, "max_tokens": 20}, timeout=30)
        assert _wait_until(lambda: runtime.router.num_inflight == 3, 5.0)
        start = time.monotonic()
        server.stop()  # what SIGTERM does
        stop_s = time.monotonic() - start
        events, whole, short = long_stream.result(), long_whole.result(), short_whole.result()
    assert short.status_code == 200  # 20 tokens (0.4 s) fit in the grace period
    assert whole.status_code == 503 and whole.json()["error"]["type"] == "service_unavailable_error"
    assert "shut down" in whole.json()["error"]["message"]
    last = json.loads(events[-1][6:])
    assert "shut down" in last["error"]["message"] and len(events) > 2
    assert stop_s < config.shutdown_grace_s + 4.0
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_the_shutdown_gate_refuses_new_work_and_cuts_waits_at_the_deadline():
    import pytest

    from oserve.runtime.errors import ShuttingDownError
    from oserve.runtime.gateway.shutdown import ShutdownGate

    async def main() -> float:
        gate = ShutdownGate(grace_s=0.2)
        gate.check_open()  # open until shutdown begins

        async def long_wait() -> None:
            async with gate.bounded():
                await asyncio.sleep(30)

        waiter = asyncio.create_task(long_wait())
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        start = loop.time()
        gate.begin()  # the wait already in progress is cut at the deadline, not after 30 s
        with pytest.raises(ShuttingDownError):
            gate.check_open()
        with pytest.raises(ShuttingDownError, match="grace period 0.2 s"):
            await waiter
        return loop.time() - start

    assert 0.15 < asyncio.run(main()) < 1.0
