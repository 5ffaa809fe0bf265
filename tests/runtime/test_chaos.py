"""Chaos (slow): 4 replicas under steady load over real HTTP, one replica killed at random every 20-30 s
and restarted by the controller. Every request the client sends completes or fails explicitly, and the
client's counts reconcile exactly with the server's.

The replicas are fake engines (timed stand-ins) whose ``kill()`` is a crash as the router sees it: every
running and later generation on it fails with ``EngineDeadError`` and its health check fails. The
gateway, router, controller, restart and HTTP client are the real ones. ``OSERVE_CHAOS_S`` sets the load
duration (default 150 s); with ``OSERVE_CHAOS_OUT=FILE`` the run's numbers are written there as JSON
(docs/runtime.md, "Chaos test", quotes ``bench/results/runtime/chaos.json``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from oserve.common.provenance import git_revision
from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.gateway.app import create_app
from oserve.runtime.replica import ReplicaState
from oserve.runtime.server import ServerThread
from oserve.runtime.serving import RuntimeConfig

from .factories import MODEL, make_runtime
from .load_client import chat_outcome

NUM_REPLICAS = 4
RATE_RPS = 20.0
DECODE_S_PER_TOKEN = 0.02
KILL_GAP_S = (20.0, 30.0)
SEED = 0


async def one_request(client: httpx.AsyncClient, max_tokens: int, long_prompt: bool,
                      stream: bool) -> str:
    """An outcome of ``load_client.chat_outcome``: ``ok``, ``http_<status>``, ``stream_error`` or
    ``lost: <why>``."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (800 if long_prompt else 8)}],
            "max_tokens": max_tokens, "stream": stream}
    return await chat_outcome(client, body, lambda text: text == " ok" * max_tokens)


def _states(runtime) -> list[ReplicaState]:
    return [h.state for h in runtime.router.table.handles]  # read from another thread: a snapshot


async def chaos(server, runtime, duration_s: float) -> dict:
    rng = np.random.default_rng(SEED)  # the requests: the same arrivals and shapes every run
    kill_rng = np.random.default_rng(SEED + 1)  # the kills (their own generator: timing-independent)
    kills: list[dict] = []
    stop = asyncio.Event()

    async def killer() -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(float(kill_rng.uniform(*KILL_GAP_S)))
            if time.monotonic() - t0 > duration_s - 10.0:  # leave time to see the last restart
                return
            table = runtime.router.table.handles
            active = [i for i, h in enumerate(table) if h.state is ReplicaState.ACTIVE]
            index = active[int(kill_rng.integers(len(active)))]
            victim = table[index]
            killed_at = time.monotonic()
            server.loop.call_soon_threadsafe(victim.engine.kill)
            kills.append({"at_s": round(killed_at - t0, 1), "replica": victim.name})
            # back when a new handle serves that replica and the whole fleet is active again
            while time.monotonic() - killed_at < 20.0 and (
                    runtime.router.table.handles[index] is victim
                    or any(s is not ReplicaState.ACTIVE for s in _states(runtime))):
                await asyncio.sleep(0.05)
            if runtime.router.table.handles[index] is not victim:
                kills[-1]["back_after_s"] = round(time.monotonic() - killed_at, 2)

    async def watch() -> int:
        worst = NUM_REPLICAS
        while not stop.is_set():
            worst = min(worst, sum(s is ReplicaState.ACTIVE for s in _states(runtime)))
            await asyncio.sleep(0.05)
        return worst

    # idle connections are dropped by the client well before the server's keep-alive timeout (5 s in
    # uvicorn): a request sent on a connection the server is closing never reaches it (a ReadError that
    # no server can count), which is not what this test is about
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500, keepalive_expiry=1.0)
    # waiting for one of the client's own 500 connections is not the server's doing (PoolTimeout was
    # counted as lost when an oversubscribed machine slowed this process, which is client and server)
    timeout = httpx.Timeout(60.0, pool=None)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout, limits=limits) as client:
        kill_task, watch_task = asyncio.create_task(killer()), asyncio.create_task(watch())
        tasks, t0 = [], time.monotonic()
        next_s = 0.0
        while next_s < duration_s:
            delay_s = next_s - (time.monotonic() - t0)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            tasks.append(asyncio.create_task(one_request(
                client, int(rng.integers(10, 51)), bool(rng.random() < 0.5), bool(rng.random() < 2 / 3))))
            next_s += float(rng.exponential(1 / RATE_RPS))
        results = await asyncio.gather(*tasks)
        await kill_task
        stop.set()
        min_active = await watch_task
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return {"sent": len(results), "client": counts, "kills": kills, "min_active_replicas": min_active,
            "wall_s": round(time.monotonic() - t0, 1)}


@pytest.mark.slow
def test_random_replica_kills_under_steady_load_lose_nothing_and_reconcile_exactly():
    duration_s = float(os.environ.get("OSERVE_CHAOS_S", "150"))
    revision = git_revision()  # the code this run loaded, whatever HEAD becomes meanwhile
    config = RuntimeConfig(max_inflight_per_replica=256, check_interval_s=1.0, restart_backoff_s=0.5)
    runtime, fleet = make_runtime(NUM_REPLICAS, FakeCost(prefill_s_per_token=1e-5,
                                                         decode_s_per_token=DECODE_S_PER_TOKEN),
                                  config=config)
    with ServerThread(create_app(runtime)) as server:
        report = asyncio.run(chaos(server, runtime, duration_s))
        deadline_s = time.monotonic() + 30.0
        while any(s is not ReplicaState.ACTIVE for s in _states(runtime)) and time.monotonic() < deadline_s:
            time.sleep(0.1)
        final_states = _states(runtime)
    m = runtime.metrics
    server_counts = {status: int(m.counter("oserve_requests_total", status=status))
                     for status in ("ok", "engine_dead", "error", "cancelled")}
    rejected = int(m.counter("oserve_rejected_total"))
    client = report["client"]
    report.update(server=server_counts, rejected=rejected, duration_s=duration_s,
                  restarts_ok=int(m.counter("oserve_replica_restarts_total", outcome="ok")),
                  restarts_failed=int(m.counter("oserve_replica_restarts_total", outcome="failed")),
                  retries=int(m.counter("oserve_retries_total")),
                  deaths=int(m.counter("oserve_replica_deaths_total")), engines_built=len(fleet.engines),
                  rate_rps=RATE_RPS, decode_s_per_token=DECODE_S_PER_TOKEN, seed=SEED,
                  git_revision=revision)
    if os.environ.get("OSERVE_CHAOS_OUT"):
        Path(os.environ["OSERVE_CHAOS_OUT"]).write_text(json.dumps(report, indent=2))

    lost = {k: n for k, n in client.items() if k.startswith("lost")}
    assert not lost, report
    kills = report["kills"]
    assert len(kills) >= max(1, int(duration_s // 30) - 1), report
    # every kill was followed by a restart, and the fleet ends whole
    assert report["restarts_ok"] == len(kills) and report["deaths"] == len(kills), report
    assert all("back_after_s" in k for k in kills), report
    assert final_states == [ReplicaState.ACTIVE] * NUM_REPLICAS
    assert report["engines_built"] == NUM_REPLICAS + len(kills)
    # exact reconciliation: what the client saw is what the server counted
    assert client.get("ok", 0) == server_counts["ok"], report
    explicit = report["sent"] - client.get("ok", 0)
    assert explicit == server_counts["engine_dead"] + server_counts["error"] + rejected, report
    assert server_counts["cancelled"] == 0 and report["sent"] == sum(server_counts.values()) + rejected
    assert set(client) <= {"ok", "stream_error", "http_503"}, report  # no 4xx, no 500
