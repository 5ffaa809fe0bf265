"""Disaggregated serving on fake engines through the real gateway: the router sends the prefill part
to a prefill replica (max_tokens 1, do_remote_decode) and the request with the prefill's KV transfer
parameters to a decode peer, as vLLM's disaggregation proxy does; fake engines honour the roles."""

from __future__ import annotations

import asyncio
import time

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Plan, Replica
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.errors import KvHandoffError
from oserve.runtime.fake_engine import FakeCost, FakeEngine
from oserve.runtime.serving import ServingRuntime
from oserve.runtime.vllm_launch import launch_for_replica, vllm_command, vllm_env

from .factories import MODEL, TYPE_NAMES, openai_client, split_by_length

CPU = ReplicaConfig("cpu")
HANDOFF_S = 0.05
PREFILL_S_PER_TOKEN = 0.002


def group_plan() -> Plan:
    """r0 colocated serves short prompts; long ones go to group 0: r1 prefills for r2 and r3."""
    replicas = (Replica(0, (0,), CPU), Replica(1, (1,), CPU, PREFILL, 0), Replica(2, (2,), CPU, DECODE, 0),
                Replica(3, (3,), CPU, DECODE, 0))
    return Plan(MODEL, replicas, TYPE_NAMES, (1.0, 1.0), ((0.0, 0.0),) * 4,
                ((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0)), 0.0, (0.0,) * 4, (), "static")


class RoleFleet:
    """Fake engines built on the real factory interface, kept so the test can inspect them."""

    def __init__(self) -> None:
        self.engines: dict[int, FakeEngine] = {}  # the latest engine of each replica
        self.built: list[FakeEngine] = []  # every engine built (restarts included)

    def __call__(self, replica: Replica) -> FakeEngine:
        cost = FakeCost(PREFILL_S_PER_TOKEN, 0.001, handoff_s=HANDOFF_S if replica.role == DECODE else 0.0)
        engine = FakeEngine(f"fake-r{replica.replica_id}", cost)
        self.engines[replica.replica_id] = engine
        self.built.append(engine)
        return engine


@pytest.fixture()
def disagg_gateway():
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import ServerThread

    fleet = RoleFleet()
    runtime = ServingRuntime(MODEL, group_plan(), fleet, split_by_length)
    with ServerThread(create_app(runtime)) as server:
        yield server, runtime, fleet


def test_long_prompts_prefill_on_the_prefill_replica_and_decode_on_its_peers(disagg_gateway):
    server, _, fleet = disagg_gateway
    client = openai_client(server)
    long_prompt = "word " * 200  # ~250 estimated tokens: type "long"
    t0 = time.perf_counter()
    reply = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=6)
    elapsed = time.perf_counter() - t0
    assert reply.choices[0].text == " ok" * 6 and reply.usage.completion_tokens == 6
    prefill, d2, d3 = fleet.engines[1], fleet.engines[2], fleet.engines[3]
    assert prefill.num_prefilled == 1 and prefill.num_handed_in == 0
    assert d2.num_handed_in + d3.num_handed_in == 1  # the decode side skipped the prefill
    assert elapsed >= HANDOFF_S + PREFILL_S_PER_TOKEN * 200
    for _ in range(4):  # the next ones go to the less loaded decode peer, all through the prefill replica
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=2)
    assert prefill.num_prefilled == 5 and d2.num_handed_in + d3.num_handed_in == 5
    short = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=3)
    assert short.choices[0].message.content == " ok" * 3
    assert fleet.engines[0].num_served == 1 and prefill.num_prefilled == 5


def test_streaming_through_a_group_and_concurrent_requests_spread_over_decode_peers(disagg_gateway):
    server, _, fleet = disagg_gateway
    client = openai_client(server)
    chunks = list(client.completions.create(model=MODEL, prompt="word " * 150, max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " ok" * 4

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: client.completions.create(
            model=MODEL, prompt="word " * 150, max_tokens=20).choices[0].text, range(8)))
    assert texts == [" ok" * 20] * 8
    assert fleet.engines[2].num_handed_in >= 2 and fleet.engines[3].num_handed_in >= 2


def test_a_dead_decode_peer_is_retried_around(disagg_gateway):
    """Killing a decode engine before the hand-off: the request is retried (prefill again, the other
    peer or the restarted one) and answered."""
    server, _, fleet = disagg_gateway
    client = openai_client(server)
    dead = fleet.engines[2]
    dead.kill()
    for _ in range(3):
        assert client.completions.create(model=MODEL, prompt="word " * 150, max_tokens=2).choices[0].text \
            == " ok" * 2
    assert dead.num_handed_in == 0
    assert sum(e.num_handed_in for e in fleet.built if e is not dead) == 3


def test_no_live_decode_peer_is_an_explicit_engine_error():
    from oserve.runtime.errors import EngineDeadError
    from oserve.runtime.metrics import Metrics
    from oserve.runtime.replica import ReplicaHandle, ReplicaState
    from oserve.runtime.router import Router, RoutingTable

    plan = group_plan()
    handles = tuple(ReplicaHandle(r, FakeEngine(f"r{r.replica_id}"), state=ReplicaState.ACTIVE)
                    for r in plan.replicas)
    router = Router(RoutingTable(1, plan, handles), Metrics())
    handles[2].num_inflight = 3
    assert router.decode_peer(handles[1]) is handles[3]  # the less loaded peer
    handles[3].state = ReplicaState.DEAD
    assert router.decode_peer(handles[1]) is handles[2]
    handles[2].state = ReplicaState.DEAD
    with pytest.raises(EngineDeadError, match="no live decode replica in group 0"):
        router.decode_peer(handles[1])


def test_a_handed_off_request_stays_outstanding_on_its_prefill_replica_for_the_dispatch():
    """Type 0 split evenly between colocated r0 and group 0's prefill replica r1: eight open streams go
    four and four (the router counts a handed-off request on r1 until it is released, as r0 counts
    its own; counting r1's prompts in prefill only, it sent r1 all but the first)."""
    from dataclasses import replace

    from oserve.runtime.metrics import Metrics
    from oserve.runtime.replica import ReplicaHandle, ReplicaState
    from oserve.runtime.router import Router, RoutingTable

    base = group_plan()
    plan = replace(base, dispatch=((0.5, 0.5, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0)))
    fleet = RoleFleet()
    handles = tuple(ReplicaHandle(r, fleet(r), state=ReplicaState.ACTIVE) for r in plan.replicas)
    router = Router(RoutingTable(1, plan, handles), Metrics())

    async def go() -> list[bool]:
        for h in handles:
            await h.engine.start()
        streams = [await router.open(GenerationRequest(f"q{i}", 50, prompt="word " * 20), 0)
                   for i in range(8)]
        on_r0 = [s.handle is handles[0] for s in streams]
        assert handles[1].num_downstream == 8 - sum(on_r0)
        for s in streams:
            await s.aclose()
        return on_r0

    on_r0 = asyncio.run(go())
    assert sum(on_r0) == 4
    assert handles[1].num_downstream == 0 and all(h.num_inflight == 0 for h in handles)


def test_fake_decode_engine_checks_the_hand_off_parameters():
    async def run() -> None:
        decode = FakeEngine("d", FakeCost(handoff_s=0.0))
        await decode.start()
        bad = GenerationRequest("x", 2, prompt="word " * 100, prompt_tokens=100,
                                kv_transfer_params={"do_remote_prefill": True, "remote_engine_id": "p",
                                                    "remote_block_ids": [0, 1]})
        with pytest.raises(KvHandoffError, match="do not describe the KV"):
            async for _ in decode.generate(bad):
                pass
        local = GenerationRequest("y", 2, prompt="word", prompt_tokens=1)
        assert [c.text async for c in decode.generate(local)] == [" ok", " ok"]
        assert decode.num_handed_in == 0

    asyncio.run(run())


def test_vllm_launch_of_a_group_sets_roles_and_side_channel_ports():
    plan = group_plan()
    gpu = [Replica(r.replica_id, (r.replica_id,), ReplicaConfig("H100"), r.role, r.group)
           for r in plan.replicas]
    launches = [launch_for_replica(r, "m", "m", 8000 + r.replica_id) for r in gpu]
    cmds = [vllm_command(x) for x in launches]
    assert "--kv-transfer-config" not in cmds[0]
    assert cmds[1][cmds[1].index("--kv-transfer-config") + 1] == \
        '{"kv_connector": "NixlConnector", "kv_role": "kv_producer"}'
    assert '"kv_role": "kv_consumer"' in cmds[2][cmds[2].index("--kv-transfer-config") + 1]
    ports = [vllm_env(x, {}).get("VLLM_NIXL_SIDE_CHANNEL_PORT") for x in launches]
    assert ports == [None, "5601", "5602", "5603"]


def test_remote_engine_speaks_vllms_disaggregation_protocol():
    """Through an in-process transport standing in for vLLM's OpenAI server: the prefill part goes
    unstreamed with do_remote_decode and its answer's kv_transfer_params come back on the chunk; the
    decode request streams with the prefill's params in its body."""
    import json

    import httpx

    from oserve.runtime.remote_engine import RemoteOpenAIEngine
    from oserve.runtime.router import REMOTE_DECODE

    seen: list[dict] = []
    handed = {"do_remote_prefill": True, "remote_engine_id": "p0", "remote_block_ids": [1, 2]}

    def vllm_standin(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if not body["stream"]:
            return httpx.Response(200, json={"choices": [{"text": " A", "finish_reason": "length"}],
                                             "usage": {"prompt_tokens": 20}, "kv_transfer_params": handed})
        events = [{"choices": [{"text": t, "finish_reason": None}]} for t in (" A", " B")]
        events.append({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2}})
        sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse)

    async def run() -> None:
        engine = RemoteOpenAIEngine("http://vllm", "m", transport=httpx.MockTransport(vllm_standin))
        await engine.start()
        try:
            prefill = [c async for c in engine.generate(GenerationRequest(
                "r", 1, prompt="hello", kv_transfer_params=REMOTE_DECODE))]
            assert len(prefill) == 1 and prefill[0].kv_transfer_params == handed
            decode = [c async for c in engine.generate(GenerationRequest(
                "r", 2, prompt="hello", kv_transfer_params=handed))]
            assert "".join(c.text for c in decode) == " A B"
        finally:
            await engine.stop()

    asyncio.run(run())
    assert seen[0]["stream"] is False and "stream_options" not in seen[0]
    assert seen[0]["kv_transfer_params"]["do_remote_decode"] is True and seen[0]["max_tokens"] == 1
    assert seen[1]["stream"] is True and seen[1]["kv_transfer_params"] == handed
