"""The engine interface: one model replica that generates text, plus the plain types it exchanges.

Every engine (embedded llama.cpp, vLLM process, remote OpenAI endpoint, Ray actor, fake) implements the
same small protocol, so the router and the controller never know which one they drive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from oserve.runtime.errors import RuntimeServeError

CHARS_PER_TOKEN_ESTIMATE = 4  # used to size prompts when an engine has no tokenizer


@dataclass(frozen=True)
class GenerationRequest:
    """What an engine is asked to do: a chat (``messages``), a raw ``prompt``, or prompt token ids."""

    request_id: str
    max_tokens: int
    prompt: str | None = None
    messages: tuple[dict, ...] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    prompt_tokens: int = 0  # as counted by the gateway; engines may report their own count
    prompt_token_ids: tuple[int, ...] | None = None  # a pre-tokenized prompt (OpenAI token arrays)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # disaggregation: vLLM's KV-connector parameters (``{"do_remote_decode": true, ...}`` to a prefill
    # replica; the prefill response's own to its decode peer), passed through to the engine
    kv_transfer_params: dict | None = None
    # ask for the log-probs of the generated tokens (the leakage guard's statistic); engines that can
    # put them on the last chunk (``TokenChunk.logprobs``), the others ignore the flag
    return_logprobs: bool = False
    # a generation handed over from a stopping replica (a switch, docs/switching.md): the text already
    # streamed to the client, which the engine continues from (recomputing its KV), and its token count,
    # already included in ``prompt_tokens``; engines that can do this set ``supports_continuation``
    continuation: str = ""
    continued_tokens: int = 0

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def text(self) -> str:
        """The prompt as plain text (chat messages joined, then any continuation), for token estimates
        and fake engines."""
        if self.prompt_token_ids is not None:
            text = " ".join(map(str, self.prompt_token_ids))
        elif self.messages is None:
            text = self.prompt or ""
        else:
            text = "\n".join(f"{m.get('role', '')}: {m.get('content') or ''}" for m in self.messages)
        return text + self.continuation


@dataclass(frozen=True)
class TokenChunk:
    """A piece of generated text. The last chunk of a generation carries ``finish_reason``."""

    text: str
    num_tokens: int = 1
    finish_reason: str | None = None
    prompt_tokens: int | None = None  # set by engines that count the prompt themselves
    kv_transfer_params: dict | None = None  # a prefill replica's answer: where its KV blocks are
    # last chunk only, when the request asked for them and the engine could: the log-probability of each
    # token of the whole generated text under the model's (unsampled) distribution, the text tokenised
    # as ``log_likelihood`` tokenises a continuation; None if not available
    logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class EngineLoad:
    """An engine's current load: requests running and waiting inside it, and (engines that report
    them, such as vLLM) its KV-cache use (0..1) and the preemptions it has made so far."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float | None = None
    num_preemptions: int | None = None

    @property
    def num_inflight(self) -> int:
        return self.num_running + self.num_waiting


@dataclass
class EngineInfo:
    """Static facts about an engine that the gateway reports and checks against."""

    name: str
    context_tokens: int = 4096
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """One replica. ``generate`` yields chunks; it raises ``EngineDeadError`` if the engine died.

    Optional flag: ``supports_continuation = True``, for engines that continue a ``GenerationRequest``
    with a ``continuation`` (the server then hands a stopping replica's generations over to another
    replica instead of waiting for them to finish). Optional hook: ``count_prompt_tokens(request) ->
    int``, the exact prompt length the engine will evaluate (chat template included); engines without
    it are sized by ``count_tokens`` of the text (see ``count_prompt_tokens`` below).

    A consumer may stop iterating ``generate`` at any point (``aclose`` or cancellation, e.g. a client
    that hung up): the engine must then stop the generation, free its slot, and must not need an await
    to do so (the consumer's task may be cancelled again while it cleans up).
    """

    info: EngineInfo

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def health(self) -> bool: ...

    def load(self) -> EngineLoad: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]: ...


def count_prompt_tokens(engine: Engine, request: GenerationRequest, text: str) -> int:
    """Prompt tokens of ``request`` on ``engine``: its own exact count when it has one, else the count
    of ``text`` (the prompt, or the chat's contents); a token-id prompt is its own length."""
    exact = getattr(engine, "count_prompt_tokens", None)
    if exact is not None:
        return int(exact(request))
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return engine.count_tokens(text)


class ScoringError(RuntimeServeError):
    """A continuation could not be scored (engine without scoring, too long for the context, ...)."""


@runtime_checkable
class ScoringEngine(Engine, Protocol):
    """An engine that can also score: the log-likelihood operation the leakage guard needs.

    ``log_likelihood`` returns the log-probability of each token of ``continuation`` when it follows
    the chat ``messages`` rendered with the model's chat template (as for an assistant turn). It raises
    ``ScoringError`` when it cannot score, ``EngineDeadError`` when the engine is gone.
    """

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]: ...


def supports_scoring(engine: object) -> bool:
    return callable(getattr(engine, "log_likelihood", None))


def estimate_tokens(text: str) -> int:
    """Token count of a text when no tokenizer is at hand: about 4 characters per token (English)."""
    return max(1, (len(text) + CHARS_PER_TOKEN_ESTIMATE - 1) // CHARS_PER_TOKEN_ESTIMATE)


__all__ = ["CHARS_PER_TOKEN_ESTIMATE", "Engine", "EngineInfo", "EngineLoad", "GenerationRequest",
           "ScoringEngine", "ScoringError", "TokenChunk", "count_prompt_tokens", "estimate_tokens",
           "supports_scoring"]
