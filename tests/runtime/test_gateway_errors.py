"""Client faults get a 4xx with a clear OpenAI-style message, never a 5xx; server states get 429/503."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.gateway.app import create_app
from oserve.runtime.server import ServerThread
from oserve.runtime.serving import RuntimeConfig

from .factories import MODEL, make_runtime, openai_client

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]

BAD_BODIES = [
    (CHAT, b"", "empty"),
    (CHAT, b"{not json", "not valid JSON"),
    (CHAT, b"[1, 2]", "JSON object"),
    (CHAT, b'{"model": "fake-model"}', "messages"),
    (CHAT, b'{"model": "fake-model", "messages": []}', "messages"),
    (CHAT, b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "x"}]}', "role"),
    (CHAT, b'{"model": "fake-model", "messages": [{"role": "user", "content": 5}]}', "content"),
    (CHAT, b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
     "max_tokens"),
    (CHAT, b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 3}', "'n'"),
    (CHAT, b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], '
           b'"temperature": "hot"}', "temperature"),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ("/v1/completions", b'{"model": "fake-model"}', "prompt"),
    ("/v1/completions", b'{"model": "fake-model", "prompt": ["a", "b"]}', "one prompt"),
    ("/v1/completions", b'{"model": "fake-model", "prompt": "x", "stream": "yes please"}', "stream"),
]


@pytest.mark.parametrize(("path", "body", "mentions"), BAD_BODIES)
def test_malformed_bodies_are_400_with_a_clear_message(gateway, path, body, mentions):
    server, _, _ = gateway
    response = httpx.post(server.base_url + path, content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert mentions.lower() in error["message"].lower()


def test_unknown_model_is_400_naming_the_served_model(gateway):
    server, _, _ = gateway
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(server).chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert info.value.status_code == 400
    assert "gpt-17" in info.value.message and MODEL in info.value.message
    assert info.value.code == "model_not_found"


def test_oversized_prompt_and_output_are_400_context_length_exceeded(gateway):
    server, runtime, _ = gateway
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="word " * 20000, max_tokens=5)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=100000)
    assert "exceeds the model's context" in info.value.message


def test_huge_body_is_413(gateway):
    server, runtime, _ = gateway
    body = b'{"model": "fake-model", "prompt": "' + b"x" * (runtime.config.max_body_bytes + 10) + b'"}'
    response = httpx.post(server.base_url + "/v1/completions", content=body)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["error"]["message"]


def test_unknown_route_and_wrong_method_are_openai_style_4xx(gateway):
    server, _, _ = gateway
    response = httpx.get(server.base_url + "/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()
    response = httpx.get(server.base_url + CHAT)
    assert response.status_code == 405 and "error" in response.json()


def test_overload_is_429_and_no_replica_is_503():
    config = RuntimeConfig(max_inflight_per_replica=1)
    runtime, fleet = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.05), config=config)
    with ServerThread(create_app(runtime)) as server:
        client = openai_client(server)
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40,
                                                stream=True)
        next(iter(stream))  # the only slot is taken
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert "full queues" in info.value.message
        stream.close()
        deadline = time.monotonic() + 10  # the server frees the slot once it sees the hang-up
        while runtime.router.num_inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        fleet.engines[0].kill()
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert info.value.status_code == 503 and "replica" in info.value.message
    assert runtime.metrics.counter("oserve_rejected_total", reason="overloaded") == 1


def test_errors_are_the_same_without_the_hot_path():
    runtime, _ = make_runtime()
    with ServerThread(create_app(runtime, fast_path=False)) as server:
        bad = httpx.post(server.base_url + CHAT, content=b"{not json")
        unknown = httpx.post(server.base_url + CHAT, json={"model": "x", "messages": MESSAGES})
        ok = openai_client(server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "model_not_found"
    assert ok.usage.completion_tokens == 2


def test_http_errors_are_counted_by_status_and_code(gateway):
    server, runtime, _ = gateway
    httpx.post(server.base_url + CHAT, content=b"{not json")
    httpx.post(server.base_url + CHAT, json={"model": "x", "messages": MESSAGES})
    httpx.get(server.base_url + "/v1/nothing")
    metrics = httpx.get(server.base_url + "/metrics").text
    assert 'oserve_http_errors_total{status="400",code="invalid_request"} 1' in metrics
    assert 'oserve_http_errors_total{status="400",code="model_not_found"} 1' in metrics
    assert 'oserve_http_errors_total{status="404",code="404"} 1' in metrics
