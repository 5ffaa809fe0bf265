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
        # a consumer that stops listening frees the model within a token (once the worker is out)
        gen = engine.generate(GenerationRequest("b", 200, prompt="Count: 1, 2, 3,", temperature=0.0))
        await gen.__anext__()
        await gen.aclose()
        for _ in range(200):
            if engine.load().num_inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.load().num_inflight == 0 and engine.num_cancelled == 1
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


def _post(url: str, path: str, body: dict, timeout_s: float = 60.0):
    import httpx

    return httpx.post(url + path, json=body, timeout=timeout_s)


def _stop_or_kill(proc) -> None:
    import subprocess

    try:
        stop(proc)
    except subprocess.TimeoutExpired:
        proc.kill()  # a wedged server never finishes SIGTERM; leave no process behind
        proc.wait()
        raise


def _metric(url: str, name: str, status: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'status="{status}"' in line)


def test_hanging_up_on_the_real_engine_neither_wedges_it_nor_keeps_it_busy():
    """Issue 9 items 1 and 3 against ``oserve serve`` with the embedded model: a stream cut after
    300 bytes (``curl -N ... | head -c 300``) and a non-streamed request abandoned after 1 s are both
    cancelled in llama.cpp; the next requests answer at once."""
    import time

    import httpx

    proc, url = serve_subprocess()
    chat = {"model": EMBEDDED_MODEL_NAME, "messages": [{"role": "user", "content": "Tell a story."}],
            "temperature": 0.0}
    try:
        assert _post(url, "/v1/chat/completions", {**chat, "max_tokens": 8}).status_code == 200
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=60,
                          json={**chat, "max_tokens": 256, "stream": True}) as response:
            next(response.iter_bytes(300))
        start = time.monotonic()
        after_stream = _post(url, "/v1/chat/completions", {**chat, "max_tokens": 4}, 30)
        after_stream_s = time.monotonic() - start
        try:
            _post(url, "/v1/chat/completions", {**chat, "max_tokens": 256}, 1.0)
        except httpx.ReadTimeout:
            pass
        start = time.monotonic()
        after_timeout = _post(url, "/v1/chat/completions", {**chat, "max_tokens": 4}, 30)
        after_timeout_s = time.monotonic() - start
        cancelled = _metric(url, "oserve_requests_total", "cancelled")
        health = httpx.get(url + "/health").status_code
    finally:
        start = time.monotonic()
        _stop_or_kill(proc)  # SIGTERM
        stop_s = time.monotonic() - start
    assert after_stream.status_code == 200 and after_timeout.status_code == 200
    assert after_stream_s < 10 and after_timeout_s < 10, (after_stream_s, after_timeout_s)
    assert cancelled == 2 and health == 200
    # uvicorn re-raises SIGTERM once its shutdown is complete; a wedged engine never got there
    assert proc.returncode in (0, -15) and stop_s < 10, (proc.returncode, stop_s)


def test_real_engine_client_faults_are_400s_and_usage_counts_the_chat_template():
    """Issue 9 item 2: an empty prompt asserted inside llama.cpp and a chat near the context limit
    overflowed it (the template's tokens were not counted): both were 500s."""
    proc, url = serve_subprocess("--context-tokens", "512")
    try:
        empty = _post(url, "/v1/completions", {"model": EMBEDDED_MODEL_NAME, "prompt": "",
                                               "max_tokens": 4})
        words = " ".join(["cat"] * 505)  # 505 tokens of content: fits alone, not with the template
        near_limit = _post(url, "/v1/chat/completions", {
            "model": EMBEDDED_MODEL_NAME, "messages": [{"role": "user", "content": words}],
            "max_tokens": 1})
        short = _post(url, "/v1/chat/completions", {
            "model": EMBEDDED_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, "temperature": 0.0})
        ids = _post(url, "/v1/completions", {"model": EMBEDDED_MODEL_NAME, "prompt": [504, 3458, 314],
                                             "max_tokens": 3, "temperature": 0.0})
        bad_ids = _post(url, "/v1/completions", {"model": EMBEDDED_MODEL_NAME, "prompt": [10**7],
                                                 "max_tokens": 3})
        logprobs = _post(url, "/v1/chat/completions", {
            "model": EMBEDDED_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
            "logprobs": True})
    finally:
        _stop_or_kill(proc)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"
    assert near_limit.status_code == 400, near_limit.text
    assert near_limit.json()["error"]["code"] == "context_length_exceeded"
    # "Hi" is one token; SmolLM2's template adds the system prompt and role markers around it
    assert short.status_code == 200 and short.json()["usage"]["prompt_tokens"] > 10
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3
    assert bad_ids.status_code == 400 and "vocabulary" in bad_ids.json()["error"]["message"]
    assert logprobs.status_code == 400 and logprobs.json()["error"]["param"] == "logprobs"


def test_sigterm_ends_a_real_stream_with_an_error_event_after_the_grace_period():
    """Issue 9 item 6 on the embedded model: the stream that cannot finish gets an SSE error event,
    llama.cpp's worker stops, and the server exits soon after the grace period, with no traceback."""
    import json
    import signal
    import threading
    import time

    import httpx

    proc, url = serve_subprocess("--shutdown-grace-s", "1", "--log-level", "info")
    log: list[str] = []
    lines: list[str] = []

    def stream() -> None:
        body = {"model": EMBEDDED_MODEL_NAME, "max_tokens": 1500, "stream": True,
                "messages": [{"role": "user", "content": "Write a very long story."}]}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            lines.extend(line for line in response.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        deadline = time.monotonic() + 60  # until the stream has its first token
        while "oserve_ttft_seconds_count" not in httpx.get(url + "/metrics").text:
            assert reader.is_alive() and time.monotonic() < deadline
            time.sleep(0.1)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        reader.join(30)
        proc.wait(30)
        exit_s = time.monotonic() - start
        log.extend(proc.stdout.read().splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = json.loads(lines[-1][6:])
    assert "shut down" in last["error"]["message"], lines[-3:]
    assert exit_s < 8, exit_s
    assert not [line for line in log if "Traceback" in line], log


def test_llama_engine_continues_a_handed_over_generation_where_it_stopped():
    """A switch hands a generation over by recompute (``GenerationRequest.continuation``): greedy, the
    prompt plus the text streamed so far gives the rest of the same answer."""
    async def main():
        engine = LlamaCppEngine(find_embedded_gguf(), num_threads=1)
        await engine.start()
        base = GenerationRequest("a", 16, prompt="The capital of France is", temperature=0.0)
        whole = [c async for c in engine.generate(base)]
        head = "".join(c.text for c in whole[:6])
        cont = GenerationRequest("a+6", 10, prompt=base.prompt, temperature=0.0, continuation=head,
                                 continued_tokens=6)
        rest = [c async for c in engine.generate(cont)]
        await engine.stop()
        return whole, head, rest

    whole, head, rest = asyncio.run(main())
    full = "".join(c.text for c in whole)
    assert sum(c.num_tokens for c in whole) == 16 and all(c.num_tokens == 1 for c in whole[:6])
    assert head + "".join(c.text for c in rest) == full
    assert sum(c.num_tokens for c in rest) == 10
