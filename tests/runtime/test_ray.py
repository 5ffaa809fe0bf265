"""Replicas as Ray actors in placement groups, on a local Ray instance with fake engines.

Slow (Ray starts in 10-25 s): run with ``pytest -m slow tests/runtime/test_ray.py``.
"""

from __future__ import annotations

import asyncio

import pytest

ray = pytest.importorskip("ray")

from oserve.costmodel.replica_config import ReplicaConfig  # noqa: E402
from oserve.planner.plan import Replica  # noqa: E402
from oserve.runtime.engine_spec import EngineSpec  # noqa: E402
from oserve.runtime.gateway.app import create_app  # noqa: E402
from oserve.runtime.ray_engine import RayActorEngine, RayPlacement, connect  # noqa: E402
from oserve.runtime.server import ServerThread  # noqa: E402
from oserve.runtime.serving import RuntimeConfig, ServingRuntime  # noqa: E402

from .factories import MODEL, make_plan, openai_client  # noqa: E402
from .test_reliability import load  # noqa: E402

pytestmark = pytest.mark.slow


def test_oserve_serve_with_ray_serves_and_shuts_down_cleanly():
    """``oserve serve --ray`` (a local Ray of its own): answers, then exits on SIGTERM within a minute.

    Runs before the module's in-process Ray starts, so the two never share a machine-wide session."""
    import signal
    import subprocess

    from .test_loadgen_cli import serve_subprocess

    proc, url = serve_subprocess("--engine", "fake", "--replicas", "2", "--ray")

    class Server:
        base_url = url

    try:
        reply = openai_client(Server).chat.completions.create(
            model="oserve-fake", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert reply.usage.completion_tokens == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code in (0, 15, -15)  # uvicorn re-raises SIGTERM after its clean shutdown


@pytest.fixture(scope="module")
def local_ray():
    connect(num_cpus=2)
    yield
    ray.shutdown()


def test_placement_bundles_follow_the_replicas_gpus():
    replica = Replica(0, (0, 1, 2, 3), ReplicaConfig("H100", tp=2, pp=2))
    assert RayPlacement().bundles(replica) == [{"GPU": 1.0, "CPU": 1.0}] * 4
    assert RayPlacement(use_gpus=False, cpus_per_bundle=0.5).bundles(replica) == [{"CPU": 0.5}] * 4


def test_ray_replicas_serve_and_a_killed_actor_loses_no_request(local_ray):
    spec = EngineSpec("fake", {"decode_s_per_token": 0.003})
    placement = RayPlacement(use_gpus=False, cpus_per_bundle=0.25)
    engines: list[RayActorEngine] = []

    def factory(replica):
        engines.append(RayActorEngine(spec, replica, placement))
        return engines[-1]

    runtime = ServingRuntime(MODEL, make_plan(3), factory, lambda n: int(n >= 100),
                             config=RuntimeConfig(max_inflight_per_replica=500))
    with ServerThread(create_app(runtime), start_timeout_s=120) as server:
        pgs = {e._pg.id for e in engines}
        assert len(pgs) == 3  # one placement group per replica
        reply = openai_client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert reply.choices[0].message.content == " ok" * 3

        counts = asyncio.run(load(server.base_url, 150, during=lambda: ray.kill(engines[0].actor)))
    assert counts["lost"] == 0, counts
    assert counts["completed"] + counts["error"] == 150 and counts["completed"] >= 90
    assert counts["error"] == runtime.metrics.counter("oserve_requests_total", status="engine_dead")
    assert runtime.metrics.counter("oserve_replica_deaths_total") == 1


def test_a_ray_placement_that_cannot_be_satisfied_fails_at_start_up_with_the_reason():
    """Issue 9 item 6: ``--ray --replicas 3`` on 2 cores accepted connections that never answered for
    600 s, then failed with an empty reason. Now it refuses before binding the port."""
    import os
    import subprocess
    import sys
    import time

    replicas = (os.cpu_count() or 1) + 1  # one CPU bundle per replica: one more than the machine has
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "oserve.cli.main", "serve", "--engine", "fake",
                           "--replicas", str(replicas), "--ray", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    elapsed_s = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot be placed" in done.stderr and f"{replicas:g} CPU needed" in done.stderr
    assert "oserve: serving" not in done.stdout  # it never listened
    assert elapsed_s < 60  # Ray's own start-up is most of it
