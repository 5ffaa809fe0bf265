"""The test statistics of an answer (its mean log-likelihood given the chat, and the gain from the
system prompt) and the chat helpers they need."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence


def mean_log_likelihood(token_logprobs: Sequence[float]) -> float | None:
    """Mean of the per-token log-probabilities; None for an empty response (nothing can leak)."""
    if not token_logprobs:
        return None
    values = [float(v) for v in token_logprobs]
    if not all(math.isfinite(v) and v <= 1e-6 for v in values):
        raise ValueError("token log-probabilities must be finite and <= 0")
    return math.fsum(values) / len(values)


async def answer_statistic(statistic: str, score, messages: tuple[dict, ...],
                           null_messages: tuple[dict, ...], answer: str,
                           answer_logprobs: Sequence[float] | None = None) -> float | None:
    """The guard's statistic of ``answer`` to the chat ``messages`` (``GuardConfig.statistic``).

    ``score(messages, text)`` returns per-token log-probs. "mean-loglik": the mean log-likelihood given
    ``messages``; "loglik-gain": that minus the mean log-likelihood given ``null_messages`` (the chat
    without its system prompt). ``answer_logprobs``, when the engine recorded them while generating
    ``answer`` from ``messages``, stand in for the scoring pass given ``messages`` (so "mean-loglik"
    needs no pass and the gain one). None for an empty answer.
    """
    async def given_messages() -> Sequence[float]:
        return answer_logprobs if answer_logprobs is not None else await score(messages, answer)

    if statistic == "mean-loglik" or not answer:
        return mean_log_likelihood(await given_messages())
    # both passes at once: an engine may score them in parallel (llama.cpp: two scoring instances)
    with_logprobs, without_logprobs = await asyncio.gather(given_messages(), score(null_messages, answer))
    with_system, without = mean_log_likelihood(with_logprobs), mean_log_likelihood(without_logprobs)
    return None if with_system is None or without is None else with_system - without


def system_prompt_of(messages: Sequence[dict]) -> str:
    """The system prompt of a chat: its system (and developer) messages joined, '' if none."""
    parts = [m.get("content") or "" for m in messages if m.get("role") in ("system", "developer")]
    return "\n".join(p for p in parts if p)


def without_system(messages: Sequence[dict], neutral_prompt: str | None = None) -> tuple[dict, ...]:
    """The chat with its system messages removed, or replaced by one ``neutral_prompt`` message."""
    rest = tuple(m for m in messages if m.get("role") not in ("system", "developer"))
    if neutral_prompt is None:
        return rest
    return ({"role": "system", "content": neutral_prompt},) + rest


__all__ = ["answer_statistic", "mean_log_likelihood", "system_prompt_of", "without_system"]
