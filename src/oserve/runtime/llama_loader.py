"""Opening a GGUF model with llama-cpp-python, with llama.cpp's extra CPU buffer types off by default.

llama.cpp moves weights into "extra" buffer types when the CPU reports support for them (AMX tiles,
repacked layouts). Virtual machines can report AMX in CPUID without enabling its register state (this
project's Firecracker CI machines do): the first AMX instruction then kills the whole process with
SIGILL. llama-cpp-python does not expose the model parameter ``use_extra_bufts``, so ``open_llama`` sets
it through the default-parameter factory ``Llama`` calls while loading (under a lock, restored after).
For SmolLM2's Q4_1 weights nothing else is lost: llama.cpp's CPU repacking does not cover Q4_1.
"""

from __future__ import annotations

import threading
from typing import Any

_LOAD_LOCK = threading.Lock()


def open_llama(extra_buffers: bool = False, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)``; with ``extra_buffers`` False, without extra buffer types."""
    import llama_cpp
    from llama_cpp import llama as llama_module

    if extra_buffers:
        return llama_module.Llama(**kwargs)
    with _LOAD_LOCK:
        original = llama_cpp.llama_model_default_params

        def default_params():
            params = original()
            params.use_extra_bufts = False
            return params

        llama_module.llama_cpp.llama_model_default_params = default_params
        try:
            return llama_module.Llama(**kwargs)
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


__all__ = ["open_llama"]
