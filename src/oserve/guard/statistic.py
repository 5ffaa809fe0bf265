"""The test statistic: the mean log-likelihood of a response's tokens given its chat context."""

from __future__ import annotations

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


__all__ = ["mean_log_likelihood", "system_prompt_of", "without_system"]
