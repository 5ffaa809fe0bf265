"""Calibrating the test for one (model, system prompt): the two samples, their Gaussians, the region.

The no-leak sample: ordinary questions answered *without* the system prompt (the way the guard
regenerates, see ``GuardConfig.null_messages``), each answer scored *with* it; or, with
``GuardConfig.no_leak_sample`` "with-system", answered with it as ordinary traffic is (answers that
reveal the prompt by ``leakage.leak_score`` left out). The leak sample:
extraction queries answered *with* the system prompt and scored with it. Both are lists of the
statistic (``GuardConfig.statistic``: the mean log-likelihood, or its gain over the chat without the
system prompt). The test (``threshold.likelihood_ratio_region``) is derived from them for the chosen
alpha; it is recomputed whenever a calibration is loaded, so a file cannot carry an inconsistent one.

Generation and scoring are reached through a small ``CalibrationBackend`` protocol, so this module knows
nothing of engines or routers (the runtime implements the protocol).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from oserve.guard.config import GuardConfig
from oserve.guard.leakage import leak_score
from oserve.guard.question_sets import EXTRACTION_QUERIES, ORDINARY_QUESTIONS
from oserve.guard.statistic import mean_log_likelihood
from oserve.guard.threshold import GaussianFit, RejectionRegion, likelihood_ratio_region

CALIBRATION_VERSION = 1
EXTRACTION_SEED_OFFSET = 1000  # extraction answers draw seeds apart from the ordinary ones


class CalibrationBackend(Protocol):
    """Generation and scoring on the model being calibrated."""

    async def generate(self, messages: tuple[dict, ...], max_tokens: int, temperature: float,
                       seed: int) -> str: ...

    async def score(self, messages: tuple[dict, ...], continuation: str) -> Sequence[float]: ...


def prompt_sha256(system_prompt: str) -> str:
    return hashlib.sha256(system_prompt.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SamplingSettings:
    """What decides the two samples; a cached calibration made with other settings is stale."""

    num_ordinary: int
    num_extraction: int
    max_tokens: int
    temperature: float
    seed: int
    regenerate: str
    neutral_system_prompt: str
    statistic: str
    no_leak_sample: str = "without-system"

    @classmethod
    def of(cls, config: GuardConfig) -> SamplingSettings:
        return cls(config.num_ordinary, config.num_extraction, config.calibration_max_tokens,
                   config.calibration_temperature, config.calibration_seed, config.regenerate,
                   config.neutral_system_prompt, config.statistic, config.no_leak_sample)


@dataclass(frozen=True)
class Calibration:
    """The samples of one (model, system prompt) and the test derived from them at ``alpha``."""

    model: str
    system_prompt_sha256: str
    no_leak_values: tuple[float, ...]
    leak_values: tuple[float, ...]
    sampling: SamplingSettings
    alpha: float
    upper_tail_is_leak: bool = True
    calibration_s: float = 0.0
    created_unix: float = 0.0
    no_leak: GaussianFit = field(init=False)
    leak: GaussianFit = field(init=False)
    region: RejectionRegion = field(init=False)  # where the guard declares a leak

    def __post_init__(self) -> None:
        no_leak = GaussianFit.from_samples(self.no_leak_values)
        leak = GaussianFit.from_samples(self.leak_values)
        region = likelihood_ratio_region(no_leak, leak, self.alpha)
        if self.upper_tail_is_leak and leak.mean > no_leak.mean:
            # an answer likelier given the system prompt than the typical leak is a leak, even where a
            # narrow leak Gaussian would put the Neyman-Pearson ratio below the threshold
            region = region.union_upper_tail(leak.mean)
        object.__setattr__(self, "no_leak", no_leak)
        object.__setattr__(self, "leak", leak)
        object.__setattr__(self, "region", region)

    def is_leak(self, value: float | None) -> bool:
        return value is not None and self.region.contains(value)

    @property
    def effective_alpha(self) -> float:
        """P(declared a leak | no leak) under the fitted no-leak Gaussian (alpha, or a little more
        with ``upper_tail_is_leak``)."""
        return self.region.probability(self.no_leak)

    @property
    def power(self) -> float:
        """P(declared a leak | leak) under the fitted leak Gaussian."""
        return self.region.probability(self.leak)

    def with_test(self, alpha: float, upper_tail_is_leak: bool) -> Calibration:
        return Calibration(self.model, self.system_prompt_sha256, self.no_leak_values, self.leak_values,
                           self.sampling, alpha, upper_tail_is_leak, self.calibration_s,
                           self.created_unix)

    def summary(self) -> dict:
        return {"model": self.model, "system_prompt_sha256": self.system_prompt_sha256,
                "statistic": self.sampling.statistic, "alpha": self.alpha,
                "effective_alpha": self.effective_alpha, "power": self.power,
                "no_leak": asdict(self.no_leak), "leak": asdict(self.leak),
                "rejection_region": [list(i) for i in self.region.intervals],
                "calibration_s": self.calibration_s}

    def to_dict(self) -> dict:
        return {"version": CALIBRATION_VERSION, "model": self.model,
                "system_prompt_sha256": self.system_prompt_sha256, "alpha": self.alpha,
                "upper_tail_is_leak": self.upper_tail_is_leak, "no_leak_values": list(self.no_leak_values),
                "leak_values": list(self.leak_values), "sampling": asdict(self.sampling),
                "calibration_s": self.calibration_s, "created_unix": self.created_unix}


async def collect_samples(system_prompt: str, config: GuardConfig, backend: CalibrationBackend,
                          memo: MutableMapping | None = None, concurrency: int = 1,
                          ) -> tuple[list[float], list[float]]:
    """The no-leak and leak samples of the statistic (empty answers are left out).

    ``memo`` caches answers and scores across calibrations on the same model: the no-leak answers do
    not depend on the system prompt, and a second statistic reuses the first one's answers and scores.
    Answers are all generated first, then all scored with the system prompt, then (for the gain) all
    without it, so that consecutive scorings share their prefix (a scorer can reuse its KV cache).
    """
    memo = {} if memo is None else memo
    limit = asyncio.Semaphore(max(1, concurrency))
    system = ({"role": "system", "content": system_prompt},)
    temperature, max_tokens = config.calibration_temperature, config.calibration_max_tokens

    async def answer(messages: tuple[dict, ...], seed: int) -> str:
        key = ("answer", repr(messages), max_tokens, temperature, seed)
        if key not in memo:
            async with limit:
                memo[key] = await backend.generate(messages, max_tokens, temperature, seed)
        return memo[key]

    async def mean_score(messages: tuple[dict, ...], text: str) -> float | None:
        key = ("score", repr(messages), text)
        if key not in memo:
            async with limit:
                memo[key] = mean_log_likelihood(await backend.score(messages, text))
        return memo[key]

    base = config.calibration_seed
    asked = [(system + ({"role": "user", "content": q},), base + i, False)
             for i, q in enumerate(ORDINARY_QUESTIONS[:config.num_ordinary])]
    asked += [(system + ({"role": "user", "content": q},), base + EXTRACTION_SEED_OFFSET + i, True)
              for i, q in enumerate(EXTRACTION_QUERIES[:config.num_extraction])]
    ordinary_with_system = config.no_leak_sample == "with-system"
    texts = await asyncio.gather(*(answer(m if leak or ordinary_with_system else config.null_messages(m),
                                          seed) for m, seed, leak in asked))
    if ordinary_with_system:  # an ordinary answer that reveals the prompt is no sample of "no leak"
        texts = [t if leak or not leak_score(t, system_prompt, "").reveals else ""
                 for t, (_, _, leak) in zip(texts, asked)]
    with_system = await asyncio.gather(*(mean_score(m, t) for (m, _, _), t in zip(asked, texts)))
    values = list(with_system)
    if config.statistic == "loglik-gain":
        without = await asyncio.gather(*(mean_score(config.null_messages(m), t) if t else _none()
                                         for (m, _, _), t in zip(asked, texts)))
        values = [None if w is None or n is None else w - n for w, n in zip(with_system, without)]
    no_leak = [v for v, (_, _, leak) in zip(values, asked) if not leak and v is not None]
    leak = [v for v, (_, _, is_leak) in zip(values, asked) if is_leak and v is not None]
    return no_leak, leak


async def _none() -> None:
    return None


async def calibrate(model: str, system_prompt: str, config: GuardConfig, backend: CalibrationBackend,
                    memo: MutableMapping | None = None, concurrency: int = 1,
                    clock=time.perf_counter) -> Calibration:
    """Collect both samples and derive the test. Raises ``ValueError`` if a sample has < 2 answers."""
    start_s = clock()
    no_leak, leak = await collect_samples(system_prompt, config, backend, memo, concurrency)
    for name, values in (("no-leak", no_leak), ("leak", leak)):
        if len(values) < 2 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"calibration of model '{model}' got {len(values)} usable {name} answers; "
                             "need at least 2 (the model answered with empty texts, or, for the no-leak "
                             "sample answered with the system prompt, with answers that reveal it)")
    return Calibration(model, prompt_sha256(system_prompt), tuple(no_leak), tuple(leak),
                       SamplingSettings.of(config), config.alpha, config.upper_tail_is_leak,
                       clock() - start_s, time.time())


__all__ = ["CALIBRATION_VERSION", "Calibration", "CalibrationBackend", "SamplingSettings", "calibrate",
           "collect_samples", "prompt_sha256"]
