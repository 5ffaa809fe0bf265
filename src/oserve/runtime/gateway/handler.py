"""The completion handler: validated request in, OpenAI-shaped response (whole or streamed) out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

from oserve.runtime.engine import GenerationRequest, TokenChunk, count_prompt_tokens, estimate_tokens
from oserve.runtime.errors import ModelNotFoundError, PromptTooLongError, RequestTooLargeError
from oserve.runtime.gateway.error_map import sse_error_event
from oserve.runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest
from oserve.runtime.gateway.shutdown import ShutdownGate
from oserve.runtime.replica import ReplicaState
from oserve.runtime.router import RoutedStream
from oserve.runtime.serving import ServingRuntime

DONE_EVENT = b"data: [DONE]\n\n"
# Prompts longer than this are tokenized in a worker thread, so a huge prompt cannot stall the event
# loop (and every other request and /health with it); shorter ones are cheaper to count in place.
TOKENIZE_OFF_LOOP_CHARS = 16_384


class CompletionHandler:
    """Turns a chat or text completion request into a routed generation and formats the answer."""

    def __init__(self, runtime: ServingRuntime, gate: ShutdownGate | None = None) -> None:
        self.runtime = runtime
        self.gate = gate or ShutdownGate(runtime.config.shutdown_grace_s)
        self.guard = None
        if runtime.config.guard is not None:  # the leakage guard step (gateway/guard_step.py)
            from oserve.runtime.gateway.guard_step import GuardStep

            self.guard = GuardStep(runtime, runtime.config.guard)

    async def open(self, body: ChatCompletionRequest | CompletionRequest) -> RoutedStream:
        self.gate.check_open()
        if body.model != self.runtime.model_name:
            raise ModelNotFoundError(body.model, [self.runtime.model_name])
        router = self.runtime.router
        is_chat = isinstance(body, ChatCompletionRequest)
        messages = (tuple({"role": m.role, "content": m.text()} for m in body.messages)
                    if isinstance(body, ChatCompletionRequest) else None)
        prompt = body.prompt_text() if isinstance(body, CompletionRequest) else None
        request = GenerationRequest(
            request_id=secrets.token_hex(8), max_tokens=1, prompt=prompt, messages=messages,
            temperature=body.temperature, top_p=body.top_p, stop=body.stop_tuple(), seed=body.seed,
            prompt_token_ids=body.prompt_token_ids() if isinstance(body, CompletionRequest) else None,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty)
        text = "\n".join(m["content"] for m in messages) if messages is not None else (prompt or "")
        prompt_tokens = await self._count_prompt(request, text)
        context_tokens = router.context_tokens()
        requested = body.requested_max_tokens()
        param = "messages" if is_chat else "prompt"
        if prompt_tokens >= context_tokens:
            raise PromptTooLongError(prompt_tokens, requested or 0, context_tokens, param)
        if requested is None:
            max_tokens = min(self.runtime.config.default_max_tokens, context_tokens - prompt_tokens)
        elif prompt_tokens + requested > context_tokens:
            raise PromptTooLongError(prompt_tokens, requested, context_tokens, "max_tokens")
        else:
            max_tokens = requested
        request = dataclasses.replace(request, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
        async with self.gate.bounded():  # the wait for a first token may be long (queueing)
            if self.guard is not None:  # the leakage guard: generate, score, maybe regenerate
                return await self.guard.open(request, router.classify(prompt_tokens))
            return await router.open(request, router.classify(prompt_tokens))

    async def _count_prompt(self, request: GenerationRequest, text: str) -> int:
        """The prompt's length as the serving engine counts it (its chat template included)."""
        engine = next((h.engine for h in self.runtime.router.table.handles
                       if h.state is ReplicaState.ACTIVE), None)
        if engine is None:
            return estimate_tokens(text)
        if len(text) > TOKENIZE_OFF_LOOP_CHARS:
            return await asyncio.to_thread(count_prompt_tokens, engine, request, text)
        return count_prompt_tokens(engine, request, text)

    async def complete(self, body: ChatCompletionRequest | CompletionRequest,
                       stream: RoutedStream) -> dict:
        parts = []
        try:
            async with self.gate.bounded():
                async for chunk in stream:
                    parts.append(chunk.text)
        finally:
            await stream.aclose()
        text = "".join(parts)
        is_chat = isinstance(body, ChatCompletionRequest)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if is_chat
                  else {"index": 0, "text": text, "logprobs": None})
        choice["finish_reason"] = stream.finish_reason or "stop"
        return {"id": _new_id(is_chat), "object": "chat.completion" if is_chat else "text_completion",
                "created": int(time.time()), "model": body.model, "choices": [choice],
                "usage": _usage(stream)}

    async def events(self, body: ChatCompletionRequest | CompletionRequest,
                     stream: RoutedStream) -> AsyncIterator[bytes]:
        is_chat = isinstance(body, ChatCompletionRequest)
        head = {"id": _new_id(is_chat),
                "object": "chat.completion.chunk" if is_chat else "text_completion",
                "created": int(time.time()), "model": body.model}
        chunks = cast(AsyncGenerator[TokenChunk, None], stream.__aiter__())
        try:
            is_first = True
            while True:
                try:  # each wait is bounded by the shutdown grace period, never a yield
                    async with self.gate.bounded():
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if is_chat:
                    delta = {"content": chunk.text}
                    if is_first:
                        delta["role"] = "assistant"
                    choice = {"index": 0, "delta": delta, "finish_reason": chunk.finish_reason}
                else:
                    choice = {"index": 0, "text": chunk.text, "logprobs": None,
                              "finish_reason": chunk.finish_reason}
                is_first = False
                yield _event({**head, "choices": [choice]})
            if body.include_usage:
                yield _event({**head, "choices": [], "usage": _usage(stream)})
            yield DONE_EVENT
        except Exception as exc:  # noqa: BLE001 - the status is sent; the error travels in the stream
            yield sse_error_event(exc)
        finally:
            await chunks.aclose()
            await stream.aclose()


def _usage(stream: RoutedStream) -> dict:
    prompt = int(stream.prompt_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": stream.num_tokens,
            "total_tokens": prompt + stream.num_tokens}


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _new_id(is_chat: bool) -> str:
    return ("chatcmpl-" if is_chat else "cmpl-") + secrets.token_hex(12)


def check_body_size(size_bytes: int, max_bytes: int) -> None:
    if size_bytes > max_bytes:
        raise RequestTooLargeError(size_bytes, max_bytes)


__all__ = ["CompletionHandler", "TOKENIZE_OFF_LOOP_CHARS", "check_body_size"]
