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


# ---- issue 9: strict types, unsupported fields, limits, access ----

COMPLETIONS = "/v1/completions"

LAX_OR_EMPTY = [
    (COMPLETIONS, {"prompt": ""}, "prompt"),
    (COMPLETIONS, {"prompt": [""]}, "prompt"),
    (COMPLETIONS, {"prompt": []}, "prompt"),
    (COMPLETIONS, {"prompt": [-1, 5]}, "prompt"),
    (CHAT, {"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
    (CHAT, {"messages": MESSAGES, "max_tokens": 2.5}, "max_tokens"),
    (CHAT, {"messages": MESSAGES, "stream": "yes"}, "stream"),
    (CHAT, {"messages": MESSAGES, "stream": 1}, "stream"),
    (CHAT, {"messages": MESSAGES, "temperature": True}, "temperature"),
    (CHAT, {"messages": MESSAGES, "seed": "7"}, "seed"),
    (CHAT, {"messages": MESSAGES, "presence_penalty": 3}, "presence_penalty"),
]


@pytest.mark.parametrize(("path", "fields", "param"), LAX_OR_EMPTY)
def test_empty_prompts_and_lax_types_are_400_naming_the_field(gateway, path, fields, param):
    server, _, _ = gateway
    response = httpx.post(server.base_url + path, json={"model": MODEL, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].split(".")[0] == param


UNSUPPORTED = [
    (CHAT, "logprobs", True), (CHAT, "top_logprobs", 3), (CHAT, "tools", [{"type": "function"}]),
    (CHAT, "tool_choice", "auto"), (CHAT, "response_format", {"type": "json_object"}),
    (CHAT, "logit_bias", {"5": 10}), (COMPLETIONS, "logprobs", 2), (COMPLETIONS, "echo", True),
    (COMPLETIONS, "best_of", 3), (COMPLETIONS, "suffix", "end"),
]


@pytest.mark.parametrize(("path", "field", "value"), UNSUPPORTED)
def test_unsupported_openai_fields_are_400_not_silently_dropped(gateway, path, field, value):
    server, _, _ = gateway
    base = {"model": MODEL, "max_tokens": 2,
            **({"messages": MESSAGES} if path == CHAT else {"prompt": "hi"})}
    refused = httpx.post(server.base_url + path, json={**base, field: value})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == field and error["code"] == "unsupported_parameter"
    off = {"logprobs": False if path == CHAT else None, "top_logprobs": 0, "tools": [],
           "tool_choice": "none", "response_format": {"type": "text"}, "logit_bias": {},
           "echo": False, "best_of": 1, "suffix": None}[field]
    assert httpx.post(server.base_url + path, json={**base, field: off}).status_code == 200


def test_token_id_prompts_and_penalties_are_served(gateway):
    server, _, _ = gateway
    client = openai_client(server)
    reply = client.completions.create(model=MODEL, prompt=[101, 7592, 2088], max_tokens=3,
                                      presence_penalty=0.5, frequency_penalty=0.5)
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 3
    nested = client.completions.create(model=MODEL, prompt=[[1, 2, 3, 4]], max_tokens=1)
    assert nested.usage.prompt_tokens == 4


def test_429_carries_retry_after_and_405_carries_allow():
    runtime, _ = make_runtime(num_replicas=1, cost=FakeCost(decode_s_per_token=0.05),
                              config=RuntimeConfig(max_inflight_per_replica=1))
    with ServerThread(create_app(runtime)) as server:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 40, "stream": True}
        with httpx.stream("POST", server.base_url + CHAT, json=body) as response:
            lines = response.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            busy = httpx.post(server.base_url + CHAT, json={**body, "stream": False})
        wrong_method = httpx.get(server.base_url + CHAT)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"


def _raw_connection(server, timeout_s: float = 5.0):
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    return sock


def test_a_chunked_body_over_the_limit_is_refused_without_being_buffered():
    """Issue 9 item 5: a 300 MB chunked body was read whole before the size check."""
    import select

    runtime, _ = make_runtime(config=RuntimeConfig(max_body_bytes=100_000))
    with ServerThread(create_app(runtime)) as server:
        sock = _raw_connection(server)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        sent_bytes, answer = 0, b""
        while sent_bytes < 300_000_000:
            if select.select([sock], [], [], 0)[0]:
                answer = sock.recv(65536)
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server closed the connection after answering
                answer = sock.recv(65536)
                break
            sent_bytes += 65536
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent_bytes < 20_000_000  # refused after about the limit, not after the whole body


def test_slow_headers_and_bodies_are_timed_out():
    """Issue 9 item 5: partial headers or bodies held a connection with no timeout."""
    import time

    runtime, _ = make_runtime(config=RuntimeConfig(body_read_timeout_s=0.5))
    with ServerThread(create_app(runtime), header_timeout_s=0.5) as server:
        slow_headers = _raw_connection(server)
        slow_headers.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        assert slow_headers.recv(1024) == b""  # closed by the server
        headers_s = time.monotonic() - start
        slow_body = _raw_connection(server)
        slow_body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                          b'{"model": ')
        answer = b""
        while part := slow_body.recv(4096):  # the 408, then the server closes the connection
            answer += part
        slow_headers.close()
        slow_body.close()
    assert headers_s < 3.0
    assert answer.startswith(b"HTTP/1.1 408") and b"request body not received" in answer


def test_tokenizing_a_huge_prompt_does_not_stall_the_event_loop():
    """Issue 9 item 5: counting a ~1 MB prompt ran on the event loop (/health stalled 2.6 s)."""
    import concurrent.futures
    import time

    from oserve.runtime.fake_engine import FakeEngine

    class SlowTokenizerEngine(FakeEngine):  # a tokenizer as slow as a real one on 1 MB of text
        def count_tokens(self, text: str) -> int:
            time.sleep(len(text) / 300_000)  # 3.3 s for the 1 MB prompt below
            return super().count_tokens(text)

    from oserve.runtime.serving import ServingRuntime

    from .factories import make_plan, split_by_length

    runtime = ServingRuntime(MODEL, make_plan(1), lambda r: SlowTokenizerEngine(context_tokens=10**6),
                             split_by_length, config=RuntimeConfig(max_body_bytes=2_000_000))
    with ServerThread(create_app(runtime)) as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.post, server.base_url + COMPLETIONS, timeout=30,
                          json={"model": MODEL, "prompt": "word " * 200_000, "max_tokens": 1})
        time.sleep(0.3)  # the 1 MB prompt is being tokenized now (3.3 s)
        start = time.monotonic()
        health = httpx.get(server.base_url + "/health", timeout=10)
        health_s = time.monotonic() - start
        assert big.result().status_code == 200
    # A stalled loop answers after the tokenizer (~3 s); 1.5 s leaves room for a loaded CI machine.
    assert health.status_code == 200 and health_s < 1.5


def test_api_key_guards_every_endpoint_but_health():
    runtime, _ = make_runtime(config=RuntimeConfig(api_key="s3cret-key"))
    with ServerThread(create_app(runtime)) as server:
        url = server.base_url
        assert httpx.get(url + "/health").status_code == 200
        for path in ("/v1/models", "/metrics", "/admin/plan", "/openapi.json"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
                response = httpx.get(url + path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["code"] == "invalid_api_key"
            good = httpx.get(url + path, headers={"Authorization": "Bearer s3cret-key"})
            assert good.status_code == 200, path
        refused = httpx.post(url + CHAT, json={"model": MODEL, "messages": MESSAGES})
        assert refused.status_code == 401
        import openai as openai_lib

        client = openai_lib.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                              max_tokens=2).usage.completion_tokens == 2
        with pytest.raises(openai_lib.AuthenticationError):
            openai_lib.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    from oserve.cli.main import build_parser
    from oserve.cli.serve_cmd import API_KEY_ENV, serve_config

    parser = build_parser()
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert serve_config(parser.parse_args(["serve"])).runtime.api_key is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert serve_config(parser.parse_args(["serve"])).runtime.api_key == "from-env"
    flag = parser.parse_args(["serve", "--api-key", "from-flag", "--shutdown-grace-s", "3"])
    assert serve_config(flag).runtime.api_key == "from-flag"
    assert serve_config(flag).runtime.shutdown_grace_s == 3.0
    with pytest.raises(SystemExit):  # argparse: one line naming the flag
        parser.parse_args(["serve", "--shutdown-grace-s", "-1"])


@pytest.mark.parametrize("error", ["RuntimeError", "RuntimeServeError"])
def test_a_server_fault_is_a_logged_500_with_its_traceback(caplog, error):
    import logging

    from oserve.runtime import errors
    from oserve.runtime.fake_engine import FakeEngine
    from oserve.runtime.serving import ServingRuntime

    from .factories import make_plan

    error_class = RuntimeError if error == "RuntimeError" else errors.RuntimeServeError

    class BrokenEngine(FakeEngine):
        async def generate(self, request):
            raise error_class("bug in the engine")
            yield  # pragma: no cover - makes this an async generator

    runtime = ServingRuntime(MODEL, make_plan(1), lambda r: BrokenEngine())
    with caplog.at_level(logging.ERROR), ServerThread(create_app(runtime)) as server:
        response = httpx.post(server.base_url + CHAT, json={"model": MODEL, "messages": MESSAGES})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "bug in the engine" in str(logged[0].exc_info[1])


def test_the_openapi_schema_describes_the_public_endpoints(gateway):
    server, _, _ = gateway
    schema = httpx.get(server.base_url + "/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(schema["paths"])
    chat = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])


def test_a_client_hanging_up_half_way_through_its_body_is_not_a_server_error(caplog):
    import logging

    runtime, _ = make_runtime()
    with caplog.at_level(logging.WARNING), ServerThread(create_app(runtime)) as server:
        sock = _raw_connection(server)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                     b'{"model": ')
        time.sleep(0.2)
        sock.close()
        time.sleep(0.5)
        ok = httpx.post(server.base_url + COMPLETIONS, json={"model": MODEL, "prompt": "hi"})
    assert ok.status_code == 200
    assert runtime.metrics.counter("oserve_http_errors_total", status="500") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
