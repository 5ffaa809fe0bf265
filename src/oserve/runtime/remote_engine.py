"""An engine that is someone else's OpenAI-compatible server (vLLM, SGLang, llama.cpp server, ...).

oserve fronts it like any replica: requests are streamed to it (``stream: true``) and its SSE chunks are
passed on. A connection failure or a 5xx answer means the replica is down (``EngineDeadError``: the router
retries elsewhere if no token was sent yet); a 4xx answer is the client's fault and is passed on as a
``ClientRequestError``. Prompt tokens are estimated at ~4 characters per token unless the server reports
usage, which vLLM does when asked with ``stream_options.include_usage``.

Disaggregation (vLLM's KV connectors): a request's ``kv_transfer_params`` go into the body. The prefill
part (``do_remote_decode``) is sent unstreamed, as vLLM's disaggregation proxy sends it, and its one
chunk carries the ``kv_transfer_params`` of the answer (where the decode replica pulls the KV from).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from oserve.runtime.engine import (
    EngineInfo,
    EngineLoad,
    GenerationRequest,
    ScoringError,
    TokenChunk,
    estimate_tokens,
)
from oserve.runtime.errors import ClientRequestError, EngineBusyError, EngineDeadError


class RemoteOpenAIEngine:
    def __init__(self, base_url: str, model: str, name: str | None = None, api_key: str | None = None,
                 context_tokens: int = 4096, timeout_s: float = 600.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.info = EngineInfo(name=name or f"remote:{self.base_url}", context_tokens=context_tokens,
                               extra={"kind": "remote", "url": self.base_url})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client_args: dict[str, Any] = dict(base_url=self.base_url, headers=headers,
                                 timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport)
        self._client: httpx.AsyncClient | None = None
        self._num_inflight = 0

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(**self._client_args)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def health(self) -> bool:
        if self._client is None:
            return False
        for path in ("/health", "/v1/models"):
            try:
                response = await self._client.get(path, timeout=5.0)
            except httpx.HTTPError:
                return False
            if response.status_code == 200:
                return True
        return False

    def load(self) -> EngineLoad:
        return EngineLoad(self._num_inflight, 0)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def _body(self, request: GenerationRequest) -> tuple[str, dict]:
        body = {"model": self.model, "max_tokens": request.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": request.temperature,
                "top_p": request.top_p}
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.presence_penalty:
            body["presence_penalty"] = request.presence_penalty
        if request.frequency_penalty:
            body["frequency_penalty"] = request.frequency_penalty
        if request.kv_transfer_params is not None:
            body["kv_transfer_params"] = request.kv_transfer_params
            if request.kv_transfer_params.get("do_remote_decode"):  # the prefill part: one answer
                body["stream"] = False
                del body["stream_options"]
        if request.messages is not None:  # request.is_chat
            return "/v1/chat/completions", {**body, "messages": list(request.messages)}
        if request.prompt_token_ids is not None:  # OpenAI servers take a token array as the prompt
            return "/v1/completions", {**body, "prompt": list(request.prompt_token_ids)}
        return "/v1/completions", {**body, "prompt": request.prompt or ""}

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if self._client is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        path, body = self._body(request)
        if not body["stream"]:
            yield await self._prefill_part(path, body, request.is_chat)
            return
        self._num_inflight += 1
        try:
            async with self._client.stream("POST", path, json=body) as response:
                await _check_status(response, self.info.name)
                finish_reason, usage_prompt, usage_completion, counted = None, None, None, 0
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise EngineDeadError(f"{self.info.name}: {event['error'].get('message')}")
                    if event.get("usage"):
                        usage_prompt = event["usage"].get("prompt_tokens")
                        usage_completion = event["usage"].get("completion_tokens")
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") if request.is_chat \
                            else choice.get("text")
                        finish_reason = choice.get("finish_reason") or finish_reason
                        if text:
                            counted += 1
                            yield TokenChunk(text, 1)
                # the server's usage, when it sends one, corrects the one-token-per-chunk count
                extra = max(0, usage_completion - counted) if usage_completion is not None else 0
                yield TokenChunk("", extra, finish_reason or "stop", usage_prompt)
        except httpx.HTTPError as exc:
            raise EngineDeadError(f"{self.info.name} unreachable: {type(exc).__name__}: {exc}") from exc
        finally:
            self._num_inflight -= 1

    async def _prefill_part(self, path: str, body: dict, is_chat: bool) -> TokenChunk:
        """The unstreamed prefill part of a disaggregated request: its token and KV transfer params."""
        self._num_inflight += 1
        try:
            answer = await self._post_json(path, body)
        finally:
            self._num_inflight -= 1
        choice = (answer.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") if is_chat else choice.get("text")
        usage = answer.get("usage") or {}
        return TokenChunk(text or "", 1, choice.get("finish_reason") or "length", usage.get("prompt_tokens"),
                          answer.get("kv_transfer_params"))

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Per-token log-probs of ``continuation`` after ``messages``, through vLLM's API.

        The server renders and tokenises the chat with its own template (``POST /tokenize`` with
        ``messages`` and ``add_generation_prompt``), tokenises the continuation alone, then scores the
        concatenated token ids with the completions API: ``echo`` plus ``logprobs`` return the
        log-prob of every prompt token, and the continuation's are the ones after the context.
        Servers without ``/tokenize`` (not vLLM) raise ``ScoringError``.
        """
        if self._client is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        context = await self._tokenize({"messages": list(messages), "add_generation_prompt": True})
        targets = await self._tokenize({"prompt": continuation, "add_special_tokens": False})
        if not targets:
            return ()
        body = {"model": self.model, "prompt": context + targets, "max_tokens": 1, "echo": True,
                "logprobs": 0, "temperature": 0.0}
        answer = await self._post_json("/v1/completions", body)
        try:
            values = answer["choices"][0]["logprobs"]["token_logprobs"]
            picked = values[len(context):len(context) + len(targets)]
            if len(picked) != len(targets) or any(v is None for v in picked):
                raise ValueError(f"{len(values)} log-probs for {len(context) + len(targets)} prompt tokens")
            return tuple(float(v) for v in picked)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ScoringError(f"{self.info.name}: echoed prompt log-probs missing or misaligned "
                               f"({type(exc).__name__}: {exc})") from None

    async def _tokenize(self, fields: dict) -> list[int]:
        answer = await self._post_json("/tokenize", {"model": self.model, **fields}, scoring_path=True)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list):
            raise ScoringError(f"{self.info.name}: /tokenize answered without a 'tokens' list")
        return [int(t) for t in tokens]

    async def _post_json(self, path: str, body: dict, scoring_path: bool = False) -> dict:
        if self._client is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineDeadError(f"{self.info.name} unreachable: {type(exc).__name__}: {exc}") from exc
        if scoring_path and response.status_code in (404, 405):
            raise ScoringError(f"{self.info.name} has no {path} endpoint: scoring through the remote "
                               "engine needs a vLLM-compatible server")
        await _check_status(response, self.info.name)
        try:
            return response.json()
        except ValueError:
            raise ScoringError(f"{self.info.name}: {path} did not answer JSON") from None


async def _check_status(response: httpx.Response, name: str) -> None:
    if response.status_code < 400:
        return
    text = (await response.aread()).decode("utf-8", "replace")
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text[:500]
    if response.status_code < 500 and response.status_code != 429:
        raise ClientRequestError(f"upstream {name} rejected the request: {message}")
    if response.status_code in (429, 503):
        raise EngineBusyError(f"upstream {name} is busy ({response.status_code}): {message}")
    raise EngineDeadError(f"upstream {name} answered {response.status_code}: {message}")


__all__ = ["RemoteOpenAIEngine"]
