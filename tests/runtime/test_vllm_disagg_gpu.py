"""Disaggregated serving on real vLLM replicas (GPU): a NIXL prefill replica on GPU 0 hands its KV to a
decode replica on GPU 1 through oserve's router step.

Needs two NVIDIA GPUs, vLLM with the NIXL connector (``pip install nixl``) and local weights named by
``OSERVE_GPU_MODEL`` (a Hugging Face id in the local cache or a path); skipped otherwise. Marked
``gpu``: not run by default.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Plan, Replica

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    import subprocess

    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return len([line for line in out.splitlines() if line.startswith("GPU ")])


def test_a_prefill_replica_hands_its_kv_to_a_decode_replica_over_nixl():
    model = os.environ.get("OSERVE_GPU_MODEL")
    if not model or _gpus() < 2 or importlib.util.find_spec("nixl") is None or shutil.which("vllm") is None:
        pytest.skip("needs 2 GPUs, vllm and nixl installed, and OSERVE_GPU_MODEL")
    from oserve.runtime.engine_spec import EngineSpec
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import ServerThread
    from oserve.runtime.serving import ServingRuntime

    from .factories import openai_client

    h = ReplicaConfig("H100")
    plan = Plan("m", (Replica(0, (0,), h, PREFILL, 0), Replica(1, (1,), h, DECODE, 0)), ("all",), (1.0,),
                ((0.0,), (0.0,)), ((1.0, 0.0),), 0.0, (0.0, 0.0), (), "static")
    spec = EngineSpec("vllm", {"model": model, "served_name": "m", "max_model_len": 4096,
                               "extra_args": ("--enforce-eager",)})
    engines = {}

    def factory(replica):
        engines[replica.replica_id] = spec.build(replica)
        return engines[replica.replica_id]

    runtime = ServingRuntime("m", plan, factory)
    with ServerThread(create_app(runtime)) as server:
        client = openai_client(server, timeout=600.0)
        reply = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8,
                                          temperature=0.0)
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].text
    assert runtime.router.table.handles[0].num_served == 0  # the prefill part is not the response
    assert runtime.router.table.handles[1].num_served == 1
