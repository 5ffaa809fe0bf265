"""The leakage guard in the request path: generate, score, and regenerate what leaks.

For a chat request with a system prompt, ``GuardStep.open`` (in place of ``Router.open``) gets the
prompt's calibration (cached, or made once), generates the answer in full (asking the engine for the
answer's log-probs, which llama.cpp records while sampling: the pass with the system prompt then costs
nothing), scores it on the replica that generated it (``GuardConfig.statistic``: its mean
log-likelihood given the whole chat, or the gain of that over the chat without the system prompt), and,
if the test declares a leak, regenerates the answer from the chat without the system prompt
(``GuardConfig.null_messages``: a model that never saw the prompt cannot reveal it). Either answer is
returned as a ``BufferedStream`` that replays its chunks,
so non-streaming and streaming responses are formatted exactly as without the guard; the usage reports
the original prompt's tokens, so no field shows that the guard acted. Streaming clients therefore get
their first token only after the check (see docs/guard.md for the added latency).

Metrics: ``oserve_guard_checks_total``, ``oserve_guard_detections_total``,
``oserve_guard_regenerations_total``, ``oserve_guard_score_errors_total``, histograms
``oserve_guard_score_seconds`` and ``oserve_guard_added_seconds``. Logs never carry the system prompt
or the answer, only a hash prefix of the prompt and the statistic.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets

from oserve.guard.config import GuardConfig
from oserve.guard.statistic import answer_statistic, system_prompt_of
from oserve.runtime.engine import (
    GenerationRequest,
    ScoringError,
    TokenChunk,
    count_prompt_tokens,
    supports_scoring,
)
from oserve.runtime.errors import EngineDeadError
from oserve.runtime.guard_backend import CalibrationStore, RouterCalibrationBackend, drain, prompt_tag
from oserve.runtime.serving import ServingRuntime

log = logging.getLogger("oserve.runtime.guard")


class BufferedStream:
    """A finished generation replayed chunk by chunk, with the fields the handler reports."""

    def __init__(self, chunks: list[TokenChunk], finish_reason: str | None, prompt_tokens: int,
                 num_tokens: int) -> None:
        self.chunks = chunks
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.num_tokens = num_tokens

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        return None


class GuardStep:
    """Checks chat answers of one runtime against the leakage of their system prompt."""

    def __init__(self, runtime: ServingRuntime, config: GuardConfig) -> None:
        self.runtime = runtime
        self.router = runtime.router
        self.config = config
        self.metrics = runtime.metrics
        self.calibrations = CalibrationStore(runtime.model_name, config,
                                             RouterCalibrationBackend(runtime.router), runtime.metrics,
                                             concurrency=max(1, len(runtime.router.table.handles)))

    async def open(self, request: GenerationRequest, type_index: int):
        system_prompt = system_prompt_of(request.messages or ())
        if not system_prompt or request.messages is None:
            return await self.router.open(request, type_index)
        calibration = await self.calibrations.get(system_prompt)  # before any replica is taken
        # engines that can (llama.cpp) return the answer's log-probs given this chat with it: the
        # statistic's pass with the system prompt then costs nothing
        stream = await self.router.open(dataclasses.replace(request, return_logprobs=True), type_index)
        engine = stream.handle.engine
        chunks = await drain(stream)
        answer = BufferedStream(chunks, stream.finish_reason, stream.prompt_tokens, stream.num_tokens)
        text = "".join(c.text for c in chunks)
        started_s = self.runtime.clock.now_s()
        logprobs = chunks[-1].logprobs if chunks else None
        leak, value = await self._check(engine, request.messages, text, calibration, logprobs)
        self.metrics.inc("oserve_guard_checks_total")
        self.metrics.observe("oserve_guard_score_seconds", (), self.runtime.clock.now_s() - started_s)
        log.debug("guard: system prompt %s, answer statistic %s: %s", prompt_tag(system_prompt),
                  "n/a" if value is None else f"{value:.3f}", "leak" if leak else "no leak")
        if leak:
            self.metrics.inc("oserve_guard_detections_total")
            answer = await self._regenerate(request, type_index, answer.prompt_tokens, engine)
        self.metrics.observe("oserve_guard_added_seconds", (), self.runtime.clock.now_s() - started_s)
        return answer

    async def _check(self, engine, messages: tuple[dict, ...], text: str, calibration, logprobs=None):
        if not text:
            return False, None  # an empty answer reveals nothing
        try:
            if not supports_scoring(engine):
                raise ScoringError(f"engine {engine.info.name} cannot score")
            value = await answer_statistic(self.config.statistic, engine.log_likelihood, messages,
                                           self.config.null_messages(messages), text, logprobs)
        except (ScoringError, EngineDeadError, ValueError) as exc:
            self.metrics.inc("oserve_guard_score_errors_total")
            log.warning("guard: scoring failed (%s: %s); %s", type(exc).__name__, exc,
                        "regenerating" if self.config.on_score_error == "regenerate" else "passing")
            return self.config.on_score_error == "regenerate", None
        return calibration.is_leak(value), value

    async def _regenerate(self, request: GenerationRequest, type_index: int, prompt_tokens: int,
                          engine) -> BufferedStream:
        messages = self.config.null_messages(request.messages or ())
        regen = dataclasses.replace(request, request_id=secrets.token_hex(8), messages=messages)
        text = "\n".join(m.get("content") or "" for m in messages)
        regen = dataclasses.replace(regen, prompt_tokens=count_prompt_tokens(engine, regen, text))
        stream = await self.router.open(regen, type_index)
        chunks = await drain(stream)
        self.metrics.inc("oserve_guard_regenerations_total")
        # the usage keeps the original prompt's token count: a smaller one would tell the guard acted
        return BufferedStream(chunks, stream.finish_reason, prompt_tokens, stream.num_tokens)


__all__ = ["BufferedStream", "GuardStep"]
