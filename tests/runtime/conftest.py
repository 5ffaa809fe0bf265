"""Fixtures of the runtime tests; the factories live in ``factories``."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")


@pytest.fixture
def gateway():
    """A started gateway over 2 zero-time fake replicas: (server thread, runtime, fleet)."""
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import ServerThread

    from .factories import make_runtime

    runtime, fleet = make_runtime()
    with ServerThread(create_app(runtime)) as server:
        yield server, runtime, fleet

