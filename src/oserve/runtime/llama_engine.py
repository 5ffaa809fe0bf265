"""An engine running a GGUF model in-process on CPU with llama-cpp-python.

llama.cpp's ``Llama`` object serves one sequence at a time, so the engine serialises generations: one
runs (in a worker thread, so the event loop stays free), the rest wait in order on a lock. The lock is
released by the worker thread itself when it is done with the model (``call_soon_threadsafe``), never by
the consumer: a consumer can be cancelled at any await (a client that hangs up), and a release that
waits on an await could then be skipped (the engine wedged for good), while a release before the thread
is done would let the next request share the model with it (llama.cpp aborts the process). A consumer
that stops listening sets a flag the worker checks after every token, so the model is freed within one
token.

Chat requests are rendered with the model's own chat template here and generated as plain completions,
so the prompt the gateway counts (``count_prompt_tokens``) is exactly the one llama.cpp evaluates: the
context check and ``usage.prompt_tokens`` include the template's tokens. Streamed pieces are not always
one token (llama.cpp holds back the bytes of a character split over several tokens); the last chunk
settles the count of generated tokens. A continuation (a generation a switch hands over from another
replica) appends the text already streamed to the prompt, tokenised again: a recompute; the
re-tokenisation may split that text differently from the tokens first sampled.

The KV cache is stored in the replica's ``kv_cache_dtype`` as llama.cpp's own cache type (``llama_kv``:
f16, q8_0, q4_0). The guard's scoring instances keep the default f16 cache.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk
from oserve.runtime.errors import ClientRequestError, EngineDeadError, EngineStartError, RuntimeServeError
from oserve.runtime.llama_kv import llama_cache_type, llama_kv_options

if TYPE_CHECKING:
    from llama_cpp import Llama

_END = object()


class LlamaCppEngine:
    # a handed-over generation (``GenerationRequest.continuation``, a switch moving it off a stopping
    # replica) is the request's prompt tokens followed by its streamed text, tokenised again
    supports_continuation = True

    def __init__(self, model_path: Path | str, name: str = "llama.cpp", context_tokens: int = 2048,
                 num_threads: int | None = None, seed: int = 0, use_extra_buffers: bool = False,
                 kv_cache_dtype: str = "bf16") -> None:
        self.model_path = Path(model_path)
        # the replica's KV format as llama.cpp's cache type (llama_kv); refused here, before loading
        self.kv_options = llama_kv_options(kv_cache_dtype)
        self.info = EngineInfo(name=name, context_tokens=context_tokens,
                               extra={"kind": "llama.cpp", "model_path": str(self.model_path),
                                      "kv_cache_type": llama_cache_type(kv_cache_dtype)})
        self.num_threads = num_threads
        self.seed = seed
        # llama.cpp's extra CPU buffer types (weight repacking, AMX tiles) are off by default: their
        # AMX kernels die with SIGILL on hosts that report AMX but do not run it (seen on the team's
        # VMs), and the embedded Q4_1 model has no repacked layout to gain from them
        self.use_extra_buffers = use_extra_buffers
        self._llama: Llama | None = None
        self._formatter = None  # the model's chat template (llama_cpp.llama_chat_format)
        self._lock = asyncio.Lock()
        self._num_waiting = 0
        self._num_running = 0
        self.num_cancelled = 0  # generations stopped early because their consumer went away

    async def start(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise EngineStartError("llama-cpp-python is not installed: pip install -e '.[serve]' "
                                   f"(it builds from source, 10-25 minutes on 2 cores): {exc}") from None
        if not self.model_path.is_file():
            raise EngineStartError(f"model file {self.model_path} does not exist")
        self._llama = await asyncio.to_thread(
            load_llama, Llama, self.use_extra_buffers, model_path=str(self.model_path),
            n_ctx=self.info.context_tokens, n_threads=self.num_threads, seed=self.seed, verbose=False,
            **self.kv_options)
        self._formatter = _chat_formatter(self._llama)

    async def stop(self) -> None:
        async with self._lock:  # held until the last worker thread is done with the model
            llama, self._llama = self._llama, None
        if llama is not None and hasattr(llama, "close"):
            llama.close()
        self.close_scorer()

    async def health(self) -> bool:
        return self._llama is not None

    def load(self) -> EngineLoad:
        return EngineLoad(self._num_running, self._num_waiting)

    def _model(self):
        if self._llama is None:
            raise EngineDeadError(f"engine '{self.info.name}' is not running")
        return self._llama

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render_chat(self, messages: tuple[dict, ...]) -> tuple[str, list[str]]:
        """The chat as the prompt text the model sees, and the template's stop strings."""
        if self._formatter is None:  # a GGUF without a template: a plain transcript
            text = "".join(f"{m.get('role')}: {m.get('content') or ''}\n" for m in messages)
            return text + "assistant:", ["\nuser:"]
        result = self._formatter(messages=list(messages))
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return result.prompt, [s for s in stop if s]

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Tokens llama.cpp evaluates for this request: chat template and BOS included."""
        return len(self._prompt_tokens(request)[0])

    def _prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], list[str]]:
        tokens, stop = self._request_tokens(request)
        if request.continuation:  # a handed-over generation: go on after the text already streamed
            tokens = tokens + self._model().tokenize(request.continuation.encode("utf-8"), add_bos=False,
                                                     special=False)
        return tokens, stop

    def _request_tokens(self, request: GenerationRequest) -> tuple[list[int], list[str]]:
        llama = self._model()
        if request.prompt_token_ids is not None:
            ids, vocab = list(request.prompt_token_ids), llama.n_vocab()
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None or not ids:  # llama.cpp would abort the process on either
                raise ClientRequestError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})"
                                         if ids else "the prompt has no tokens", "prompt")
            return ids, []
        if request.messages is not None:
            text, stop = self.render_chat(request.messages)
            # the template writes its own special tokens (as llama-cpp-python's chat handler does)
            return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True), stop
        if not request.prompt:  # llama.cpp asserts on an empty batch
            raise ClientRequestError("the prompt is empty; give at least one character", "prompt")
        return llama.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True), []

    def _count_generated(self, text: str, finish_reason: str | None, max_tokens: int) -> int:
        if finish_reason == "length" and max_tokens:
            return max_tokens  # generation stopped exactly at the limit
        llama = self._llama
        if llama is None or not text:
            return 0
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _stream(self, request: GenerationRequest, recorder=None):
        llama = self._model()
        tokens, template_stop = self._prompt_tokens(request)
        if len(tokens) + request.max_tokens > self.info.context_tokens:  # llama.cpp: a ValueError
            raise ClientRequestError(
                f"prompt of {len(tokens)} tokens plus max_tokens={request.max_tokens} exceeds the "
                f"model's context of {self.info.context_tokens} tokens", "messages"
                if request.is_chat else "prompt", "context_length_exceeded")
        stop = list(request.stop) + template_stop
        options = dict(max_tokens=request.max_tokens, temperature=request.temperature,
                       top_p=request.top_p, stop=stop or None, stream=True,
                       presence_penalty=request.presence_penalty,
                       frequency_penalty=request.frequency_penalty)
        if request.seed is not None:
            options["seed"] = request.seed
        if recorder is not None:
            recorder.num_prompt_tokens = len(tokens)
            options["logits_processor"] = [recorder]
        # a token list is evaluated as given (no BOS added, no re-tokenization)
        return llama.create_completion(prompt=tokens, **options)

    def _produce(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue, cancelled: threading.Event, recorder=None) -> None:
        """Worker thread: stream pieces to ``queue``; release the model when done, whatever happens."""
        pieces = None
        try:
            pieces = self._stream(request, recorder)
            for piece in pieces:
                if cancelled.is_set():
                    self.num_cancelled += 1
                    break
                choice = piece["choices"][0]
                _post(loop, queue.put_nowait, (choice.get("text") or "", choice.get("finish_reason")))
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop and raised there
            _post(loop, queue.put_nowait, exc)
        finally:
            if pieces is not None and hasattr(pieces, "close"):
                pieces.close()  # ends llama-cpp-python's generator inside this thread
            _post(loop, queue.put_nowait, _END)
            _post(loop, self._release)

    def _release(self) -> None:
        self._num_running -= 1
        self._lock.release()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        self._model()
        self._num_waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._num_waiting -= 1
        self._num_running += 1
        cancelled = threading.Event()
        queue: asyncio.Queue = asyncio.Queue()
        recorder = None
        if request.return_logprobs:
            from oserve.runtime.llama_scoring import GenerationLogprobs

            recorder = GenerationLogprobs(0)  # the prompt's length is set where it is tokenised
        worker = threading.Thread(target=self._produce, name=f"{self.info.name}-{request.request_id}",
                                  args=(request, asyncio.get_running_loop(), queue, cancelled, recorder),
                                  daemon=True)
        try:
            worker.start()
        except BaseException:
            self._release()
            raise
        try:
            is_first, finish_reason = True, None
            pieces: list[str] = []
            while (item := await queue.get()) is not _END:
                if isinstance(item, RuntimeServeError):
                    raise item  # a client error found by the worker stays a client error
                if isinstance(item, BaseException):
                    raise RuntimeServeError(f"engine '{self.info.name}' failed: {item}") from item
                text, finish_reason = item[0], item[1] or finish_reason
                if not text:
                    continue
                pieces.append(text)
                yield TokenChunk(text, 1, None, request.prompt_tokens if is_first else None)
                is_first = False
            text = "".join(pieces)
            generated = self._count_generated(text, finish_reason, request.max_tokens)
            # the worker is done with the recorder: _END is its last message
            logprobs = None if recorder is None or not text else recorder.for_text(
                self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))
            yield TokenChunk("", max(0, generated - len(pieces)), finish_reason or "stop",
                             request.prompt_tokens if is_first else None, logprobs=logprobs)
        finally:
            # no await here: this runs when the consumer is cancelled too, and must not be skipped
            cancelled.set()


    # --- scoring (the leakage guard's log-likelihood operation); see llama_scoring.py ---------------
    # Two scoring instances, one for chats with a system prompt and one for chats without (the guard's
    # two passes): each keeps its own prefix in its KV cache (the system prompt, the template's default
    # one), and the two passes of one check run in parallel. Both are opened on the first call.
    _scorers: dict | None = None
    _scorer_locks: dict | None = None  # asyncio.Locks, made on the first call (the engine may be built
                                       # outside the event loop)

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Per-token log-probs of ``continuation`` after ``messages`` (rendered and tokenised exactly as
        for generation), on scoring instances of the model of their own, so that scoring waits neither
        for this replica's generations nor blocks the event loop (it runs in worker threads)."""
        self._model()
        if self._scorer_locks is None or self._scorers is None:
            self._scorer_locks = {role: asyncio.Lock() for role in (True, False)}
            self._scorers = {}
        locks, scorers = self._scorer_locks, self._scorers
        role = any(m.get("role") in ("system", "developer") for m in messages)
        async with locks[role]:
            scorer: Any = scorers.get(role)
            if scorer is None:
                from oserve.runtime.llama_scoring import LlamaScorer

                scorer = await asyncio.to_thread(
                    LlamaScorer, self.model_path, self._encode_chat, self.info.context_tokens,
                    self.num_threads, self.use_extra_buffers)
                scorers[role] = scorer
            return tuple(await asyncio.to_thread(scorer.score, messages, continuation))

    def _encode_chat(self, messages: Sequence[dict]) -> list[int]:
        return self._prompt_tokens(GenerationRequest("score", 1, messages=tuple(messages)))[0]

    def close_scorer(self) -> None:
        scorers, self._scorers = self._scorers or {}, None
        self._scorer_locks = None
        for scorer in scorers.values():
            scorer.close()

def _post(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass  # the event loop is closed (process exiting): nobody is left to tell


_LOAD_LOCK = threading.Lock()


def load_llama(llama_class, use_extra_buffers: bool, **kwargs):
    """``Llama(**kwargs)``, with llama.cpp's ``use_extra_bufts`` model parameter set (llama-cpp-python
    does not expose it, so its default-parameters function is wrapped while this model loads)."""
    import llama_cpp.llama as module

    with _LOAD_LOCK:
        defaults = module.llama_cpp.llama_model_default_params

        def params():
            value = defaults()
            if hasattr(value, "use_extra_bufts"):
                value.use_extra_bufts = use_extra_buffers
            return value

        module.llama_cpp.llama_model_default_params = params
        try:
            return llama_class(**kwargs)
        finally:
            module.llama_cpp.llama_model_default_params = defaults


def _chat_formatter(llama):
    """The GGUF's own chat template, as llama-cpp-python would apply it (None if it has none)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    model = llama._model  # noqa: SLF001 - the token texts are only reachable here

    def token_text(token_id: int) -> str:
        return model.token_get_text(token_id) if token_id != -1 else ""

    return Jinja2ChatFormatter(template=template, eos_token=token_text(llama.token_eos()),
                               bos_token=token_text(llama.token_bos()))


__all__ = ["LlamaCppEngine"]
