"""Schema-based fuzzing of the gateway: schemathesis, run unchanged on the served ``/openapi.json``.

Slow (about a minute): run with ``pytest -m slow tests/runtime/test_gateway_fuzz.py``. Bounded by
``--max-examples`` per operation and a fixed seed; the check is the issue's bar: no answer is a 5xx.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from oserve.runtime.gateway.app import create_app
from oserve.runtime.server import ServerThread

from .factories import make_runtime

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis not installed "
                    "(pip install -e '.[test]')")
def test_schemathesis_finds_no_server_error_in_the_public_endpoints(tmp_path):
    runtime, _ = make_runtime()
    with ServerThread(create_app(runtime)) as server:
        done = subprocess.run(
            ["schemathesis", "run", server.base_url + "/openapi.json", "--checks",
             "not_a_server_error", "--max-examples", str(MAX_EXAMPLES), "--seed", "9",
             "--request-timeout", "30"], capture_output=True, text=True, timeout=900,
            cwd=tmp_path)  # schemathesis keeps its example database in the working directory
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert done.returncode == 0 and summary, done.stdout[-3000:]
    generated, passed = int(summary.group(1)), int(summary.group(2))
    assert generated == passed and generated >= 100, summary.group(0)
    server_errors = sum(v for (name, labels), v in runtime.metrics.counters.items()
                        if name == "oserve_http_errors_total" and dict(labels)["status"] >= "500")
    assert server_errors == 0
    assert runtime.metrics.counter("oserve_requests_total", status="ok") > 0  # it got past validation
