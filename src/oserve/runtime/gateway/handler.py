"""The completion handler: validated request in, OpenAI-shaped response (whole or streamed) out."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator

from oserve.runtime.engine import GenerationRequest
from oserve.runtime.errors import ModelNotFoundError, PromptTooLongError, RequestTooLargeError
from oserve.runtime.gateway.error_map import sse_error_event
from oserve.runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest
from oserve.runtime.router import RoutedStream
from oserve.runtime.serving import ServingRuntime

DONE_EVENT = b"data: [DONE]\n\n"


class CompletionHandler:
    """Turns a chat or text completion request into a routed generation and formats the answer."""

    def __init__(self, runtime: ServingRuntime) -> None:
        self.runtime = runtime
        self.guard = None
        if runtime.config.guard is not None:  # the leakage guard step (gateway/guard_step.py)
            from oserve.runtime.gateway.guard_step import GuardStep

            self.guard = GuardStep(runtime, runtime.config.guard)

    async def open(self, body: ChatCompletionRequest | CompletionRequest) -> RoutedStream:
        if body.model != self.runtime.model_name:
            raise ModelNotFoundError(body.model, [self.runtime.model_name])
        router = self.runtime.router
        is_chat = isinstance(body, ChatCompletionRequest)
        messages = tuple({"role": m.role, "content": m.text()} for m in body.messages) if is_chat else None
        prompt = None if is_chat else body.prompt_text()
        text = "\n".join(m["content"] for m in messages) if is_chat else prompt
        prompt_tokens = router.count_tokens(text)
        context_tokens = router.context_tokens()
        requested = body.requested_max_tokens()
        if prompt_tokens >= context_tokens:
            raise PromptTooLongError(prompt_tokens, requested or 0, context_tokens)
        if requested is None:
            max_tokens = min(self.runtime.config.default_max_tokens, context_tokens - prompt_tokens)
        elif prompt_tokens + requested > context_tokens:
            raise PromptTooLongError(prompt_tokens, requested, context_tokens)
        else:
            max_tokens = requested
        request = GenerationRequest(
            request_id=secrets.token_hex(8), max_tokens=max_tokens, prompt=prompt, messages=messages,
            temperature=body.temperature, top_p=body.top_p, stop=body.stop_tuple(), seed=body.seed,
            prompt_tokens=prompt_tokens)
        if self.guard is not None:
            return await self.guard.open(request, router.classify(prompt_tokens))
        return await router.open(request, router.classify(prompt_tokens))

    async def complete(self, body: ChatCompletionRequest | CompletionRequest,
                       stream: RoutedStream) -> dict:
        parts = []
        try:
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
        try:
            is_first = True
            async for chunk in stream:
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


__all__ = ["CompletionHandler", "check_body_size"]
