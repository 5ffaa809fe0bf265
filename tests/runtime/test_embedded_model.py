"""The embedded real model (SmolLM2-135M-Instruct, llama.cpp on CPU) behind ``oserve serve``.

Slow (model load and CPU generation): run with ``pytest -m slow tests/runtime``.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("llama_cpp")

from oserve.runtime.embedded_model import EMBEDDED_MODEL_NAME, find_embedded_gguf  # noqa: E402
from oserve.runtime.engine import GenerationRequest  # noqa: E402
from oserve.runtime.llama_engine import LlamaCppEngine  # noqa: E402

from .factories import openai_client  # noqa: E402
from .test_loadgen_cli import serve_subprocess, stop  # noqa: E402

pytestmark = pytest.mark.slow


def test_llama_engine_generates_counts_and_stops_early():
    async def main():
        engine = LlamaCppEngine(find_embedded_gguf(), num_threads=1)
        await engine.start()
        assert engine.count_tokens("Hello, how are you today?") >= 5
        chunks = [c async for c in engine.generate(GenerationRequest(
            "a", 8, prompt="The capital of France is", temperature=0.0, prompt_tokens=5))]
        # a consumer that stops listening frees the model for the next request at once
        gen = engine.generate(GenerationRequest("b", 200, prompt="Count: 1, 2, 3,", temperature=0.0))
        await gen.__anext__()
        await gen.aclose()
        assert engine.load().num_inflight == 0
        await engine.stop()
        return chunks

    chunks = asyncio.run(main())
    assert "Paris" in "".join(c.text for c in chunks)
    assert sum(c.num_tokens for c in chunks) == 8 and chunks[-1].finish_reason == "length"


def test_oserve_serve_answers_real_chat_completions_streamed_and_not():
    proc, url = serve_subprocess()  # the README's command: embedded model, no flags

    class Server:
        base_url = url

    try:
        client = openai_client(Server)
        assert [m.id for m in client.models.list().data] == [EMBEDDED_MODEL_NAME]
        question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        reply = client.chat.completions.create(model=EMBEDDED_MODEL_NAME, messages=question,
                                               max_tokens=12, temperature=0.0)
        assert "Paris" in reply.choices[0].message.content
        assert 1 <= reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
        # an emoji takes several tokens that llama.cpp streams as one piece: usage still counts tokens
        emoji = client.completions.create(model=EMBEDDED_MODEL_NAME, prompt="🌍🌟😄🌍🌟😄🌍🌟😄",
                                          max_tokens=20, temperature=0.0)
        assert emoji.choices[0].finish_reason == "length" and emoji.usage.completion_tokens == 20
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=EMBEDDED_MODEL_NAME, messages=question, max_tokens=12, temperature=0.0,
            stream=True) if c.choices]
        assert "Paris" in "".join(parts) and len(parts) >= 2
        text = client.completions.create(model=EMBEDDED_MODEL_NAME, prompt="1, 2, 3, 4,",
                                         max_tokens=6, temperature=0.0)
        assert text.choices[0].text.strip()
    finally:
        stop(proc)
