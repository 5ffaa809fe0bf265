"""The engines' log-likelihood operation: the numeric core, the fake test scorer, the remote (vLLM) path."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from oserve.guard.statistic import answer_statistic
from oserve.runtime.engine import ScoringEngine, ScoringError, supports_scoring
from oserve.runtime.fake_engine import FakeEngine, fake_log_likelihood
from oserve.runtime.llama_scoring import GenerationLogprobs, token_logprobs


def test_token_logprobs_is_the_log_softmax_at_the_targets():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    got = token_logprobs(logits, [2, 1, 0])
    want0 = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert got == pytest.approx([want0, -math.log(3), 0.0])


def _log_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    return row - (row.max() + np.log(np.exp(row - row.max()).sum()))


def test_generation_logprobs_record_each_sampled_token_under_the_raw_logits():
    steps = [np.array([0.0, 2.0, 1.0]), np.array([3.0, 0.0, 0.0]), np.array([0.5, 0.5, 4.0])]
    recorder = GenerationLogprobs(num_prompt_tokens=2)
    prompt = [7, 8]
    sampled = [1, 0, 2]
    for i, logits in enumerate(steps):  # llama.cpp calls it before each sampling with the ids so far
        ids = np.array(prompt + sampled[:i])
        assert recorder(ids, logits) is logits  # the logits go on unchanged
    want = [_log_softmax(steps[i])[t] for i, t in enumerate(sampled)]
    # the last sampled token (it hit max_tokens) is resolved from the text's tokens
    assert recorder.for_text([1, 0, 2]) == pytest.approx(want)
    # the last sample was the end-of-sequence token: the text's tokens are the ones evaluated
    assert recorder.for_text([1, 0]) == pytest.approx(want[:2])
    # a text that the sampled tokens do not spell (a stop string cut it, another tokenisation)
    assert recorder.for_text([1, 2]) is None and recorder.for_text([1, 0, 2, 2]) is None


def test_statistic_uses_the_generation_logprobs_for_the_pass_with_the_system_prompt():
    scored = []

    async def score(messages, text):
        scored.append(messages)
        return [-2.0, -2.0]

    chat = ({"role": "system", "content": "s"}, {"role": "user", "content": "q"})
    gain = asyncio.run(answer_statistic("loglik-gain", score, chat, chat[1:], "a b", [-0.5, -0.5]))
    assert gain == pytest.approx(1.5) and scored == [chat[1:]]  # only the pass without it
    mean = asyncio.run(answer_statistic("mean-loglik", score, chat, chat[1:], "a b", [-0.5, -0.5]))
    assert mean == pytest.approx(-0.5) and len(scored) == 1  # no pass at all
    assert asyncio.run(answer_statistic("loglik-gain", score, chat, chat[1:], "a b")) == 0.0
    assert scored[1:] == [chat, chat[1:]]  # without recorded log-probs: both passes


def test_fake_scorer_is_deterministic_and_favours_copying_the_system_prompt():
    system = ({"role": "system", "content": "The code is ZEBRA-4471, keep it."},)
    copy, other = "The code is ZEBRA-4471", "Bananas grow on tall plants"
    assert fake_log_likelihood(system, copy) == fake_log_likelihood(system, copy)
    assert sum(fake_log_likelihood(system, copy)) / 4 > sum(fake_log_likelihood(system, other)) / 4
    engine = FakeEngine()
    assert isinstance(engine, ScoringEngine) and supports_scoring(engine)
    asyncio.run(engine.start())
    assert asyncio.run(engine.log_likelihood(system, copy)) == fake_log_likelihood(system, copy)


def _vllm_double(context_ids, target_ids, echo_logprobs=None, tokenize_status=200):
    """TEST DOUBLE of a vLLM server's /tokenize and /v1/completions (echo + logprobs)."""
    httpx = pytest.importorskip("httpx")
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        if request.url.path == "/tokenize":
            if tokenize_status != 200:
                return httpx.Response(tokenize_status, text="not found")
            return httpx.Response(200, json={"tokens": context_ids if "messages" in body else target_ids})
        prompt = body["prompt"]
        values = echo_logprobs or [None] + [-0.1 * i for i in range(1, len(prompt))] + [-1.0]
        return httpx.Response(200, json={"choices": [{"text": "x", "logprobs": {
            "tokens": [str(t) for t in prompt] + ["x"], "token_logprobs": values}}]})

    return httpx.MockTransport(handle), seen


def test_remote_engine_scores_through_tokenize_and_echoed_prompt_logprobs():
    pytest.importorskip("httpx")
    from oserve.runtime.remote_engine import RemoteOpenAIEngine

    transport, seen = _vllm_double([1, 2, 3, 4], [7, 8])
    engine = RemoteOpenAIEngine("http://vllm", "m", transport=transport)
    messages = ({"role": "system", "content": "s"}, {"role": "user", "content": "q"})

    async def main():
        await engine.start()
        try:
            return await engine.log_likelihood(messages, "answer")
        finally:
            await engine.stop()

    assert asyncio.run(main()) == pytest.approx((-0.4, -0.5))  # positions 4 and 5 of the prompt
    (p1, b1), (p2, b2), (p3, b3) = seen
    assert (p1, b1["messages"], b1["add_generation_prompt"]) == ("/tokenize", list(messages), True)
    assert (p2, b2["prompt"], b2["add_special_tokens"]) == ("/tokenize", "answer", False)
    assert p3 == "/v1/completions" and b3["prompt"] == [1, 2, 3, 4, 7, 8] and b3["echo"] is True
    assert b3["logprobs"] == 0


def test_remote_engine_without_tokenize_or_with_short_logprobs_raises_scoring_error():
    pytest.importorskip("httpx")
    from oserve.runtime.remote_engine import RemoteOpenAIEngine

    async def score(transport):
        engine = RemoteOpenAIEngine("http://x", "m", transport=transport)
        await engine.start()
        try:
            return await engine.log_likelihood(({"role": "user", "content": "q"},), "a")
        finally:
            await engine.stop()

    with pytest.raises(ScoringError, match="no /tokenize endpoint"):
        asyncio.run(score(_vllm_double([1], [2], tokenize_status=404)[0]))
    with pytest.raises(ScoringError, match="misaligned"):
        asyncio.run(score(_vllm_double([1, 2], [3], echo_logprobs=[None, -0.5])[0]))
