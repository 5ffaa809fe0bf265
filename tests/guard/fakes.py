"""Test doubles for the guard's runtime tests: a model that leaks its system prompt when asked to."""

from __future__ import annotations

import asyncio
import random
import zlib

from oserve.runtime.engine import (
    EngineInfo,
    EngineLoad,
    GenerationRequest,
    ScoringError,
    TokenChunk,
    estimate_tokens,
)
from oserve.runtime.fake_engine import fake_log_likelihood

EXTRACTION_WORDS = ("instruction", "prompt", "repeat", "verbatim", "system", "secret", "rules", "told",
                    "configuration", "guidelines", "echo", "recite", "copy", "hidden", "first message",
                    "confidential", "text above", "before my", "operator", "setup", "reveal")
VOCABULARY = ("sunny", "river", "bread", "orbit", "violin", "garden", "pencil", "planet", "silver",
              "window", "coffee", "mountain", "yellow", "shadow", "rabbit", "castle", "winter", "forest")


class LeakyEngine:
    """TEST DOUBLE of a model replica: with a system prompt, a request that asks for instructions is
    answered with the system prompt itself (a leak); anything else with words drawn deterministically
    from a small vocabulary by question and seed. Scores with ``fake_log_likelihood``."""

    def __init__(self, name: str = "leaky", fail_scoring: bool = False) -> None:
        self.info = EngineInfo(name=name, context_tokens=4096, extra={"kind": "test-leaky"})
        self.fail_scoring = fail_scoring
        self.num_scored = 0
        self.requests: list[GenerationRequest] = []
        self._running = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def health(self) -> bool:
        return True

    def load(self) -> EngineLoad:
        return EngineLoad(self._running, 0)

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def answer(self, request: GenerationRequest) -> str:
        messages = request.messages or ()
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        question = messages[-1]["content"] if messages else request.prompt or ""
        if system and any(w in question.lower() for w in EXTRACTION_WORDS):
            return system
        rng = random.Random(zlib.crc32(f"{question}|{request.seed}".encode()))
        return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(6, 14))) + "."

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        self._running += 1
        try:
            words = self.answer(request).split(" ")[:request.max_tokens]
            for i, word in enumerate(words):
                await asyncio.sleep(0)
                last = i == len(words) - 1
                yield TokenChunk(("" if i == 0 else " ") + word, 1, "stop" if last else None,
                                 request.prompt_tokens if i == 0 else None)
        finally:
            self._running -= 1

    async def log_likelihood(self, messages, continuation):
        self.num_scored += 1
        if self.fail_scoring:
            raise ScoringError("scoring broken (test)")
        return fake_log_likelihood(messages, continuation)
