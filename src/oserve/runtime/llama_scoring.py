"""Scoring with llama.cpp: the per-token log-probabilities of a continuation given a chat context.

A ``LlamaScorer`` holds its own ``Llama`` instance opened with ``logits_all=True`` (the generating
instance keeps the default, which drops the logits of all but the last position and would need a
context-sized logits buffer otherwise). Both map the same GGUF file, so the weights are shared through
the page cache; the scorer adds its KV cache and an ``n_ctx x n_vocab`` float32 logits buffer (~400 MB
for SmolLM2 at 2048 tokens). Having its own instance, scoring never waits for the replica's generation
lock, and runs in a worker thread, so no other replica (and not the event loop) waits for it.

The chat context is rendered with the model's own chat template (the same Jinja template llama-cpp-python
uses for ``create_chat_completion``), the continuation tokenised without special tokens, the two
evaluated in one pass, and each continuation token scored by the log-softmax of the logits at the position
before it. Consecutive calls sharing a prefix (the system prompt) reuse its evaluated KV cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
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


class LlamaScorer:
    """Scores continuations on a GGUF model. Thread-safe (one scoring at a time)."""

    def __init__(self, model_path: Path | str, context_tokens: int = 2048,
                 num_threads: int | None = None) -> None:
        from oserve.runtime.llama_loader import open_llama

        self.context_tokens = context_tokens
        self._llama = open_llama(model_path=str(model_path), n_ctx=context_tokens, n_threads=num_threads,
                            logits_all=True, verbose=False)
        self._formatter = self._chat_formatter()
        self._lock = threading.Lock()

    def _chat_formatter(self):
        from llama_cpp import llama_chat_format

        llama = self._llama
        name = llama.chat_format or ""
        metadata = llama.metadata
        key = "tokenizer.chat_template" + ("" if name == "chat_template.default"
                                           else "." + name.removeprefix("chat_template."))
        if name.startswith("chat_template.") and key in metadata:
            eos, bos = llama.token_eos(), llama.token_bos()
            return llama_chat_format.Jinja2ChatFormatter(
                template=metadata[key], eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "")
        formatter = getattr(llama_chat_format, "format_" + name.replace("-", "_"), None)
        if formatter is None:
            raise ScoringError(f"cannot score on chat format '{name}': no chat template in the GGUF "
                               "file and no llama-cpp-python formatter of that name")
        return formatter

    def context_tokens_of(self, messages: Sequence[dict]) -> list[int]:
        result = self._formatter(messages=[dict(m) for m in messages])
        return self._llama.tokenize(result.prompt.encode("utf-8"),
                                    add_bos=not getattr(result, "added_special", False), special=True)

    def score(self, messages: Sequence[dict], continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after the chat ``messages``."""
        llama = self._llama
        with self._lock:
            context = self.context_tokens_of(messages)
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


__all__ = ["LlamaScorer", "token_logprobs"]
