"""The gateway over a real uvicorn server on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import httpx

from .factories import MODEL, openai_client


def test_chat_completion_with_usage(gateway):
    server, _, _ = gateway
    client = openai_client(server)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=5)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == " ok" * 5
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_chat_completion_streams_deltas_and_usage(gateway):
    server, _, _ = gateway
    client = openai_client(server)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(deltas) == " ok" * 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices


def test_text_completion_plain_and_streamed(gateway):
    server, _, _ = gateway
    client = openai_client(server)
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=3)
    assert reply.object == "text_completion" and reply.choices[0].text == " ok" * 3
    assert reply.usage.completion_tokens == 3
    parts = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=["Once"], max_tokens=2, stream=True)]
    assert "".join(parts) == " ok" * 2


def test_default_max_tokens_for_chat_is_bounded(gateway):
    server, runtime, _ = gateway
    reply = openai_client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.usage.completion_tokens == runtime.config.default_max_tokens


def test_models_health_metrics_admin(gateway):
    server, _, _ = gateway
    client = openai_client(server)
    assert [m.id for m in client.models.list().data] == [MODEL]
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 800}],
                                   max_tokens=1)
    base = server.base_url
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{base}/metrics").text
    assert 'oserve_requests_total{type="long",replica=' in metrics
    assert "oserve_request_latency_seconds_bucket" in metrics
    assert "oserve_ttft_seconds_count" in metrics
    assert 'oserve_queue_depth{replica="r0"} 0' in metrics
    assert "oserve_plan_version 1" in metrics
    admin = httpx.get(f"{base}/admin/plan").json()
    assert admin["plan_version"] == 1 and admin["plan"]["types"] == ["short", "long"]
    assert [r["state"] for r in admin["replicas"]] == ["active", "active"]
    assert admin["history"][0]["reason"] == "initial plan"


def test_health_is_503_when_no_replica_lives(gateway):
    server, runtime, fleet = gateway
    for handle in runtime.router.table.handles:
        runtime.router.mark_dead(handle)
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 503
