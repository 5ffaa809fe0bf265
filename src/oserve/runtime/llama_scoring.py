"""Scoring with llama.cpp: the per-token log-probabilities of a continuation given a chat context.

Two ways: ``GenerationLogprobs`` records them *during* a generation (the logits of every sampled
position are computed anyway, so the answer's log-probs given its own prompt cost no extra pass), and
``LlamaScorer`` evaluates a given continuation after a given chat (for any other context: the guard's
pass without the system prompt, calibration answers scored under another prompt).

A ``LlamaScorer`` holds its own ``Llama`` instance opened with ``logits_all=True`` (the generating
instance keeps the default, which drops the logits of all but the last position and would need a
context-sized logits buffer otherwise). Both map the same GGUF file, so the weights are shared through
the page cache; the scorer adds its KV cache and an ``n_ctx x n_vocab`` float32 logits buffer (~400 MB
for SmolLM2 at 2048 tokens). Having its own instance, scoring never waits for the replica's generation
lock, and runs in a worker thread, so no other replica (and not the event loop) waits for it.

The chat context is rendered and tokenised by the generating engine (the model's own chat template), the
continuation tokenised without special tokens, the two evaluated in one pass, and each continuation
token scored by the log-softmax of the logits at the position before it. Consecutive calls sharing a
prefix (the system prompt) reuse its evaluated KV cache.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from oserve.runtime.engine import ScoringError


def token_logprobs(logits: np.ndarray, targets: Sequence[int]) -> list[float]:
    """log softmax(logits[i])[targets[i]] for each row ``i`` (rows: the positions before each target)."""
    rows = np.asarray(logits, dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    picked = rows[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)]
    return (picked - log_norm).tolist()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class GenerationLogprobs:
    """A llama.cpp logits processor that records the log-prob of each token a generation samples.

    llama-cpp-python calls it before every sampling step with the ids so far and the raw logits (it is
    the first stage of the sampler chain, so penalties, temperature and top-k/p have not touched them:
    the log-probs are the model's own distribution, as ``LlamaScorer`` computes them). The token sampled
    at one step is known at the next (it is the last id), so one step's log-softmax is kept until then;
    the last sampled token (the one that hit ``max_tokens``, or the end-of-sequence token) is resolved by
    ``for_text``. Not thread-safe: one generation, one worker thread.
    """

    def __init__(self, num_prompt_tokens: int) -> None:
        self.num_prompt_tokens = num_prompt_tokens
        self.token_ids: list[int] = []
        self.values: list[float] = []
        self._pending: np.ndarray | None = None  # log-softmax of the latest step, its token not known yet

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self._pending is not None and len(input_ids) > self.num_prompt_tokens + len(self.token_ids):
            token = int(input_ids[-1])
            self.token_ids.append(token)
            self.values.append(float(self._pending[token]))
        rows = np.asarray(logits, dtype=np.float64)
        top = rows.max()
        self._pending = rows - (top + np.log(np.exp(rows - top).sum()))
        return logits

    def for_text(self, text_token_ids: Sequence[int]) -> tuple[float, ...] | None:
        """The log-probs of the tokens of the generated text (``text_token_ids``: the text tokenised
        without special tokens, as a scored continuation is), or None where the sampled tokens do not
        spell exactly those (a stop string cut the text, a non-canonical tokenisation): the caller then
        scores the text instead."""
        ids, known = list(text_token_ids), len(self.token_ids)
        if ids == self.token_ids:
            return tuple(self.values)
        if len(ids) == known + 1 and ids[:known] == self.token_ids and self._pending is not None:
            return tuple(self.values) + (float(self._pending[ids[-1]]),)
        return None


class LlamaScorer:
    """Scores continuations on a GGUF model. Thread-safe (one scoring at a time).

    ``encode_context(messages)`` gives the token ids of a chat as the generating engine renders it
    (``LlamaCppEngine._prompt_tokens``: chat template, special tokens), so that scoring sees exactly the
    prompt the answer was generated from.
    """

    def __init__(self, model_path: Path | str, encode_context: Callable[[Sequence[dict]], list[int]],
                 context_tokens: int = 2048, num_threads: int | None = None,
                 use_extra_buffers: bool = False) -> None:
        from llama_cpp import Llama

        from oserve.runtime.llama_engine import load_llama

        self.context_tokens = context_tokens
        self.encode_context = encode_context
        self._llama = load_llama(Llama, use_extra_buffers, model_path=str(model_path),
                                 n_ctx=context_tokens, n_threads=num_threads, logits_all=True,
                                 verbose=False)
        self._lock = threading.Lock()

    def score(self, messages: Sequence[dict], continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after the chat ``messages``."""
        llama = self._llama
        with self._lock:
            context = self.encode_context(messages)
            targets = llama.tokenize(continuation.encode("utf-8"), add_bos=False, special=False)
            if not targets:
                return []
            tokens = context + targets
            if len(tokens) > self.context_tokens:
                raise ScoringError(f"context of {len(context)} plus continuation of {len(targets)} tokens "
                                   f"exceeds the scoring context of {self.context_tokens} tokens")
            reuse = min(_common_prefix(tokens, llama.input_ids[:llama.n_tokens]), len(tokens) - 1)
            llama.n_tokens = reuse  # eval drops the KV cache beyond this point first
            llama.eval(tokens[reuse:])
            start = len(context) - 1  # logits at position p predict token p + 1
            return token_logprobs(llama.scores[start:start + len(targets)], targets)

    def close(self) -> None:
        with self._lock:  # never under a running score
            if hasattr(self._llama, "close"):
                self._llama.close()


__all__ = ["GenerationLogprobs", "LlamaScorer", "token_logprobs"]
