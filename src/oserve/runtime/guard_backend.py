"""The guard's calibrations on a running runtime: generation and scoring through the router, cached.

``RouterCalibrationBackend`` implements ``oserve.guard.CalibrationBackend`` on the router (calibration
answers are ordinary routed generations; scoring runs on a live replica that can score).
``CalibrationStore`` hands out the calibration of a system prompt: from memory, else from the disk cache,
else by calibrating once (concurrent requests for the same prompt share one calibration). Log lines name
a system prompt by the first 12 hex digits of its SHA-256, never by its text.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from oserve.guard.cache import CalibrationCache
from oserve.guard.calibration import Calibration, calibrate, prompt_sha256
from oserve.guard.config import GuardConfig
from oserve.runtime.engine import GenerationRequest, ScoringError, supports_scoring
from oserve.runtime.errors import RuntimeServeError
from oserve.runtime.metrics import Metrics
from oserve.runtime.replica import ReplicaState
from oserve.runtime.router import RoutedStream, Router

log = logging.getLogger("oserve.runtime.guard")


class GuardCalibrationError(RuntimeServeError):
    """A system prompt could not be calibrated, so requests using it cannot be checked (HTTP 500)."""


def prompt_tag(system_prompt: str) -> str:
    """How logs name a system prompt: a hash prefix."""
    return "sha256:" + prompt_sha256(system_prompt)[:12]


async def drain(stream) -> list:
    """All chunks of a routed stream, which is closed (settled) in any case."""
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


class RouterCalibrationBackend:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._next = 0

    async def open(self, messages: tuple[dict, ...], max_tokens: int, temperature: float,
                   seed: int | None) -> RoutedStream:
        prompt_tokens = self.router.count_tokens("\n".join(m.get("content") or "" for m in messages))
        request = GenerationRequest(request_id=secrets.token_hex(8), max_tokens=max_tokens,
                                    messages=messages, temperature=temperature, seed=seed,
                                    prompt_tokens=prompt_tokens)
        return await self.router.open(request, self.router.classify(prompt_tokens))

    async def generate(self, messages: tuple[dict, ...], max_tokens: int, temperature: float,
                       seed: int) -> str:
        chunks = await drain(await self.open(messages, max_tokens, temperature, seed))
        return "".join(c.text for c in chunks)

    async def score(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        engines: list = [h.engine for h in self.router.table.handles
                         if h.state is ReplicaState.ACTIVE and supports_scoring(h.engine)]
        if not engines:
            raise ScoringError("no live replica of this model can score (the engines lack "
                               "log_likelihood); the guard cannot run")
        self._next += 1
        return await engines[self._next % len(engines)].log_likelihood(messages, continuation)


class CalibrationStore:
    """Calibrations of one served model, by system prompt."""

    def __init__(self, model: str, config: GuardConfig, backend, metrics: Metrics | None = None,
                 concurrency: int = 1, memo: dict | None = None) -> None:
        self.model = model
        self.config = config
        self.backend = backend
        self.metrics = metrics or Metrics()
        self.concurrency = concurrency
        self.cache = CalibrationCache(config.calibration_dir)
        self._ready: dict[str, Calibration] = {}
        self._pending: dict[str, asyncio.Task] = {}
        # answers and scores of calibrations (no-leak answers do not depend on the system prompt)
        self._memo: dict = {} if memo is None else memo

    async def get(self, system_prompt: str) -> Calibration:
        key = prompt_sha256(system_prompt)
        if key in self._ready:
            return self._ready[key]
        cached = self.cache.load(self.model, system_prompt, self.config)
        if cached is not None:
            self._ready[key] = cached
            return cached
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._calibrate(system_prompt, key))
            self._pending[key] = task
        # shielded: a client that goes away does not abort a calibration others may be waiting for
        return await asyncio.shield(task)

    async def _calibrate(self, system_prompt: str, key: str) -> Calibration:
        tag = prompt_tag(system_prompt)
        log.info("guard: calibrating system prompt %s for model %s (%d ordinary, %d extraction "
                 "queries)", tag, self.model, self.config.num_ordinary, self.config.num_extraction)
        try:
            calibration = await calibrate(self.model, system_prompt, self.config, self.backend,
                                          self._memo, self.concurrency)
        except ValueError as exc:
            self.metrics.inc("oserve_guard_calibrations_total", (("status", "failed"),))
            raise GuardCalibrationError(f"leakage guard: calibration of system prompt {tag} failed: "
                                        f"{exc}") from None
        except BaseException:
            self.metrics.inc("oserve_guard_calibrations_total", (("status", "failed"),))
            raise
        finally:
            self._pending.pop(key, None)
        path = self.cache.save(calibration, system_prompt)
        self._ready[key] = calibration
        self.metrics.inc("oserve_guard_calibrations_total", (("status", "ok"),))
        s = calibration.summary()
        log.info("guard: calibrated %s in %.1f s (%s): no-leak N(%.3f, %.3f), leak N(%.3f, %.3f), "
                 "leak region %s, power %.3f; saved to %s", tag, calibration.calibration_s,
                 self.config.statistic,
                 s["no_leak"]["mean"], s["no_leak"]["std"], s["leak"]["mean"], s["leak"]["std"],
                 s["rejection_region"], s["power"], path)
        return calibration


__all__ = ["CalibrationStore", "GuardCalibrationError", "RouterCalibrationBackend", "drain", "prompt_tag"]
