"""An engine running a GGUF model in-process on CPU with llama-cpp-python.

llama.cpp's ``Llama`` object serves one sequence at a time, so the engine serialises generations: one
runs (in a worker thread, so the event loop stays free), the rest wait in order. Chunks cross from the
worker thread to the event loop through an asyncio queue; a consumer that stops listening (client gone)
sets a flag the worker checks after every token, which frees the model at once. Each streamed chunk is
one sampled token (llama-cpp-python streams token by token), which is how completion tokens are counted;
prompt tokens are counted with the model's own tokenizer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk
from oserve.runtime.errors import EngineDeadError, EngineStartError, RuntimeServeError

_END = object()


class LlamaCppEngine:
    def __init__(self, model_path: Path | str, name: str = "llama.cpp", context_tokens: int = 2048,
                 num_threads: int | None = None, seed: int = 0) -> None:
        self.model_path = Path(model_path)
        self.info = EngineInfo(name=name, context_tokens=context_tokens,
                               extra={"kind": "llama.cpp", "model_path": str(self.model_path)})
        self.num_threads = num_threads
        self.seed = seed
        self._llama = None
        self._lock = asyncio.Lock()
        self._num_waiting = 0
        self._num_running = 0

    async def start(self) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise EngineStartError("llama-cpp-python is not installed: pip install -e '.[serve]' "
                                   f"(it builds from source, 10-25 minutes on 2 cores): {exc}") from None
        if not self.model_path.is_file():
            raise EngineStartError(f"model file {self.model_path} does not exist")
        from oserve.runtime.llama_loader import open_llama  # no AMX/extra buffers: see llama_loader

        self._llama = await asyncio.to_thread(
            open_llama, model_path=str(self.model_path), n_ctx=self.info.context_tokens,
            n_threads=self.num_threads, seed=self.seed, verbose=False)

    async def stop(self) -> None:
        async with self._lock:
            llama, self._llama = self._llama, None
        if llama is not None and hasattr(llama, "close"):
            llama.close()
        self.close_scorer()

    async def health(self) -> bool:
        return self._llama is not None

    def load(self) -> EngineLoad:
        return EngineLoad(self._num_running, self._num_waiting)

    def count_tokens(self, text: str) -> int:
        if self._llama is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _count_generated(self, text: str, finish_reason: str | None, max_tokens: int) -> int:
        if finish_reason == "length" and max_tokens:
            return max_tokens  # generation stopped exactly at the limit
        llama = self._llama
        if llama is None or not text:
            return 0
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _stream(self, request: GenerationRequest):
        llama = self._llama
        if llama is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        common = dict(max_tokens=request.max_tokens, temperature=request.temperature,
                      top_p=request.top_p, stop=list(request.stop) or None, stream=True)
        if request.seed is not None:
            common["seed"] = request.seed
        if request.is_chat:
            return llama.create_chat_completion(messages=list(request.messages), **common)
        return llama.create_completion(prompt=request.prompt or "", **common)

    def _produce(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue, cancelled: threading.Event) -> None:
        try:
            for piece in self._stream(request):
                if cancelled.is_set():
                    break
                choice = piece["choices"][0]
                if request.is_chat:
                    text = choice["delta"].get("content") or ""
                else:
                    text = choice.get("text") or ""
                loop.call_soon_threadsafe(queue.put_nowait, (text, choice.get("finish_reason")))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop and raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if self._llama is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        self._num_waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._num_waiting -= 1
        self._num_running += 1
        cancelled = threading.Event()
        queue: asyncio.Queue = asyncio.Queue()
        worker = asyncio.create_task(asyncio.to_thread(
            self._produce, request, asyncio.get_running_loop(), queue, cancelled))
        try:
            is_first, finish_reason = True, None
            pieces: list[str] = []
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise RuntimeServeError(f"engine '{self.info.name}' failed: {item}") from item
                text, finish_reason = item[0], item[1] or finish_reason
                if not text:
                    continue  # the role-only first delta of a chat stream, or the closing one
                pieces.append(text)
                yield TokenChunk(text, 1, None, request.prompt_tokens if is_first else None)
                is_first = False
            # A streamed piece is not always one token (llama.cpp holds back the bytes of a character
            # split over several tokens), so the last chunk settles the count for the usage report.
            generated = self._count_generated("".join(pieces), finish_reason, request.max_tokens)
            yield TokenChunk("", max(0, generated - len(pieces)), finish_reason or "stop",
                             request.prompt_tokens if is_first else None)
        finally:
            cancelled.set()
            await asyncio.gather(worker, return_exceptions=True)
            self._num_running -= 1
            self._lock.release()

    # --- scoring (the leakage guard's log-likelihood operation); see llama_scoring.py ---------------
    # Two scoring instances, one for chats with a system prompt and one for chats without (the guard's
    # two passes): each keeps its own prefix in its KV cache (the system prompt, the template's default
    # one), and the two passes of one check run in parallel. Both are opened on the first call.
    _scorers: dict | None = None
    _scorer_locks: dict | None = None  # asyncio.Locks, made on the first call (the engine may be built
                                       # outside the event loop)

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Per-token log-probs of ``continuation`` after ``messages``, on scoring instances of the model
        of their own, so that scoring waits neither for this replica's generations nor blocks the event
        loop (it runs in worker threads)."""
        if self._llama is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        if self._scorer_locks is None:
            self._scorer_locks = {role: asyncio.Lock() for role in (True, False)}
            self._scorers = {}
        role = any(m.get("role") in ("system", "developer") for m in messages)
        async with self._scorer_locks[role]:
            scorer = self._scorers.get(role)
            if scorer is None:
                from oserve.runtime.llama_scoring import LlamaScorer

                scorer = await asyncio.to_thread(
                    LlamaScorer, self.model_path, self.info.context_tokens, self.num_threads)
                self._scorers[role] = scorer
            return tuple(await asyncio.to_thread(scorer.score, messages, continuation))

    def close_scorer(self) -> None:
        scorers, self._scorers = self._scorers or {}, None
        self._scorer_locks = None
        for scorer in scorers.values():
            scorer.close()

__all__ = ["LlamaCppEngine"]
