"""Engines other than the fake: remote OpenAI endpoint (against a real server), vLLM launch commands."""

from __future__ import annotations

import asyncio

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica
from oserve.runtime.engine import Engine, GenerationRequest
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.errors import ClientRequestError, EngineDeadError, EngineStartError
from oserve.runtime.fake_engine import FakeEngine
from oserve.runtime.gateway.app import create_app
from oserve.runtime.remote_engine import RemoteOpenAIEngine
from oserve.runtime.server import ServerThread
from oserve.runtime.serving import ServingRuntime
from oserve.runtime.vllm_engine import VllmLaunch, launch_for_replica, vllm_command, vllm_env

from .factories import MODEL, make_plan, make_runtime, openai_client


def test_every_engine_satisfies_the_protocol():
    assert isinstance(FakeEngine(), Engine)
    assert isinstance(RemoteOpenAIEngine("http://127.0.0.1:1", "m"), Engine)


async def _generate(engine, request):
    return [c async for c in engine.generate(request)]


def test_remote_engine_streams_chat_and_text_from_an_openai_server(gateway):
    server, _, _ = gateway

    async def main():
        engine = RemoteOpenAIEngine(server.base_url, MODEL)
        await engine.start()
        assert await engine.health()
        chat = await _generate(engine, GenerationRequest("a", 3, messages=({"role": "user",
                                                                             "content": "hi"},)))
        text = await _generate(engine, GenerationRequest("b", 2, prompt="hello"))
        await engine.stop()
        return chat, text

    chat, text = asyncio.run(main())
    assert "".join(c.text for c in chat) == " ok" * 3 and chat[-1].finish_reason == "length"
    assert sum(c.num_tokens for c in chat) == 3 and chat[-1].prompt_tokens >= 1
    assert "".join(c.text for c in text) == " ok" * 2


def test_remote_engine_reports_client_faults_and_dead_servers(gateway):
    server, _, _ = gateway

    async def main():
        wrong_model = RemoteOpenAIEngine(server.base_url, "no-such-model")
        nobody = RemoteOpenAIEngine("http://127.0.0.1:9", MODEL)  # discard port: nothing listens
        for engine in (wrong_model, nobody):
            await engine.start()
        with pytest.raises(ClientRequestError, match="no-such-model"):
            await _generate(wrong_model, GenerationRequest("a", 1, prompt="x"))
        with pytest.raises(EngineDeadError, match="unreachable"):
            await _generate(nobody, GenerationRequest("a", 1, prompt="x"))
        assert not await nobody.health()

    asyncio.run(main())


def test_oserve_fronts_another_openai_server_through_the_remote_engine(gateway):
    upstream, _, _ = gateway
    spec = EngineSpec("remote", {"url": upstream.base_url, "model": MODEL})
    front = ServingRuntime(MODEL, make_plan(1), lambda r: spec.build(r))
    with ServerThread(create_app(front)) as server:
        client = openai_client(server)
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
    assert reply.choices[0].message.content == " ok" * 4 and reply.usage.completion_tokens == 4
    assert streamed == " ok" * 4


def test_vllm_command_carries_the_replicas_tp_pp_and_gpus():
    replica = Replica(3, (8, 9, 10, 11), ReplicaConfig("H100", tp=2, pp=2))
    launch = launch_for_replica(replica, "meta-llama/Llama-2-70b-hf", "llama-2-70b", 31000)
    cmd = vllm_command(launch)
    assert cmd[:3] == ["vllm", "serve", "meta-llama/Llama-2-70b-hf"]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags["--tensor-parallel-size"] == "2" and flags["--pipeline-parallel-size"] == "2"
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "31000"
    assert flags["--served-model-name"] == "llama-2-70b" and flags["--dtype"] == "bfloat16"
    assert vllm_env(launch, base={})["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # node-local ids


def test_vllm_command_for_fp8_and_extra_args():
    launch = VllmLaunch("m", "m", 1, precision="fp8", max_model_len=4096,
                        extra_args=("--enable-prefix-caching",))
    cmd = vllm_command(launch)
    assert cmd[cmd.index("--quantization") + 1] == "fp8" and "--dtype" not in cmd
    assert cmd[cmd.index("--max-model-len") + 1] == "4096" and cmd[-1] == "--enable-prefix-caching"


def test_vllm_launch_rejects_a_replica_with_the_wrong_gpu_count():
    replica = Replica(0, (0, 1), ReplicaConfig("H100", tp=4))
    with pytest.raises(EngineStartError, match="needs 4"):
        launch_for_replica(replica, "m", "m", 1)


def test_vllm_engine_without_vllm_installed_fails_to_start_clearly():
    from oserve.runtime.vllm_engine import VllmProcessEngine

    engine = VllmProcessEngine(VllmLaunch("m", "m", 1, executable="vllm-not-installed-here"))
    with pytest.raises(EngineStartError, match="not found"):
        asyncio.run(engine.start())


def test_engine_spec_rejects_unknown_kinds_and_builds_fakes():
    with pytest.raises(EngineStartError, match="unknown engine"):
        EngineSpec("tpu-magic")
    engine = EngineSpec("fake", {"decode_s_per_token": 0.5}).build(
        Replica(2, (0,), ReplicaConfig("cpu")))
    assert engine.cost.decode_s_per_token == 0.5 and engine.info.name == "fake-r2"


def test_runtime_fails_to_start_when_a_replica_fails_health():
    runtime, fleet = make_runtime(num_replicas=2)

    async def main():
        fleet.engines[1].kill()
        await runtime.start()

    with pytest.raises(EngineStartError, match="1 of 2 replicas"):
        asyncio.run(main())


def test_a_busy_upstream_is_retried_elsewhere_but_not_retired():
    from oserve.runtime.fake_engine import FakeCost
    from oserve.runtime.replica import ReplicaState
    from oserve.runtime.serving import RuntimeConfig

    busy, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.05),
                           config=RuntimeConfig(max_inflight_per_replica=1))
    with ServerThread(create_app(busy)) as upstream:
        hold = openai_client(upstream).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40, stream=True)
        next(iter(hold))  # the upstream's only slot is taken: it answers 429
        specs = [EngineSpec("remote", {"url": upstream.base_url, "model": MODEL}), EngineSpec("fake")]
        front = ServingRuntime(MODEL, make_plan(2, dispatch=[[1.0, 0.0], [1.0, 0.0]]),
                               lambda r: specs[r.replica_id].build(r))
        with ServerThread(create_app(front)) as server:
            reply = openai_client(server).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            states = [h.state for h in front.router.table.handles]
        hold.close()
    assert reply.choices[0].message.content == " ok" * 2
    assert states == [ReplicaState.ACTIVE, ReplicaState.ACTIVE]
    assert front.metrics.counter("oserve_retries_total", replica="r0") == 1


def test_when_the_only_upstream_is_busy_the_client_gets_429():
    import openai

    from oserve.runtime.fake_engine import FakeCost
    from oserve.runtime.serving import RuntimeConfig

    busy, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.05),
                           config=RuntimeConfig(max_inflight_per_replica=1))
    with ServerThread(create_app(busy)) as upstream:
        hold = openai_client(upstream).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=40, stream=True)
        next(iter(hold))
        spec = EngineSpec("remote", {"url": upstream.base_url, "model": MODEL})
        front = ServingRuntime(MODEL, make_plan(1), lambda r: spec.build(r))
        with ServerThread(create_app(front)) as server:
            with pytest.raises(openai.RateLimitError, match="busy"):
                openai_client(server).chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        hold.close()


class StandInLlama:
    """A test double of ``llama_cpp.Llama`` (the library edge): streams one piece per 10 ms from the
    worker thread and records how many threads are inside it at once (llama.cpp allows one)."""

    def __init__(self) -> None:
        import threading

        self.inside = 0
        self.max_inside = 0
        self.num_closed = 0
        self._lock = threading.Lock()
        self.metadata: dict = {}

    def tokenize(self, data: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [1] * (len(data.split()) + int(add_bos))

    def n_vocab(self) -> int:
        return 100

    def create_completion(self, prompt, max_tokens, **_):
        import time

        with self._lock:
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        try:
            for i in range(max_tokens):
                time.sleep(0.01)
                yield {"choices": [{"text": " ok", "finish_reason": "length" if i == max_tokens - 1
                                    else None}]}
        finally:
            with self._lock:
                self.inside -= 1
                self.num_closed += 1


def _llama_engine_with(stand_in):
    from oserve.runtime.llama_engine import LlamaCppEngine

    engine = LlamaCppEngine("unused.gguf")
    engine._llama = stand_in  # noqa: SLF001 - start() would load a real GGUF file
    return engine


def test_llama_engine_is_not_wedged_by_a_consumer_cancelled_twice_mid_stream():
    """Issue 9 item 1: a client hanging up cancels the consumer at every await (anyio cancel scopes),
    the clean-up included. The model must still be released, only once its worker thread is done."""
    stand_in = StandInLlama()
    engine = _llama_engine_with(stand_in)

    async def consume(request_id: str, max_tokens: int) -> list[str]:
        return [c.text async for c in engine.generate(GenerationRequest(request_id, max_tokens,
                                                                        prompt="hi there"))]

    async def main():
        first = engine.generate(GenerationRequest("a", 500, prompt="count"))

        async def hang_up():
            async for _ in first:  # cancelled while it waits inside the engine for a piece
                pass

        task = asyncio.create_task(hang_up())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()  # cancelled again while it cleans up, as an anyio cancel scope does
        await asyncio.gather(task, return_exceptions=True)
        await first.aclose()
        # the next requests get the model, promptly and never alongside the stopped generation
        texts = await asyncio.wait_for(asyncio.gather(consume("b", 3), consume("c", 3)), 5.0)
        await asyncio.wait_for(engine.stop(), 5.0)
        return texts

    texts = asyncio.run(main())
    assert texts == [[" ok"] * 3 + [""], [" ok"] * 3 + [""]]
    assert stand_in.max_inside == 1 and stand_in.inside == 0
    assert engine.num_cancelled == 1 and stand_in.num_closed == 3
    assert engine.load().num_inflight == 0


def test_remote_engine_passes_token_id_prompts_and_penalties_upstream(gateway):
    server, _, _ = gateway

    async def main():
        engine = RemoteOpenAIEngine(server.base_url, MODEL)
        await engine.start()
        chunks = await _generate(engine, GenerationRequest(
            "a", 2, prompt_token_ids=(5, 6, 7, 8, 9), presence_penalty=0.5, frequency_penalty=-0.5))
        await engine.stop()
        return chunks

    chunks = asyncio.run(main())
    # the upstream (an oserve gateway over fakes) counts a token-id prompt as its own length
    assert chunks[-1].prompt_tokens == 5 and sum(c.num_tokens for c in chunks) == 2
