"""LMDeploy TurboMind replicas as processes: launched from a plan replica through ``EngineSpec``, healthy,
serving, reporting load, stopped with their children.

The process is a test double of the ``lmdeploy`` console script (``lmdeploy_standin/lmdeploy``): it
checks the argument list against the flags of LMDeploy 0.18's api_server parser, records it, and serves
the shared stand-in OpenAI server. The real TurboMind needs CUDA: ``test_a_real_turbomind_replica``
(marked gpu) runs it where a GPU, LMDeploy and a model are present.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.errors import EngineDeadError, EngineStartError
from oserve.runtime.lmdeploy_engine import LmdeployProcessEngine

STANDIN = Path(__file__).parent / "lmdeploy_standin" / "lmdeploy"
INT4_INT8_TP2 = Replica(3, (10, 11), ReplicaConfig("H100-80GB", 2, 1, weight_format="int4",
                                                    kv_cache_dtype="int8", max_num_seqs=32))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def standin_engine(tmp_path, monkeypatch, replica: Replica = INT4_INT8_TP2, extra_args=(), **env):
    monkeypatch.setenv("STANDIN_CHILD_FILE", str(tmp_path / "child.pid"))
    monkeypatch.setenv("STANDIN_ARGV_FILE", str(tmp_path / "argv.json"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = EngineSpec("lmdeploy", {"model": "/models/llama-awq", "served_name": "llama",
                                   "executable": str(STANDIN), "session_len": 4096,
                                   "startup_timeout_s": 60, "log_dir": str(tmp_path),
                                   "extra_args": tuple(extra_args)})
    engine = spec.build(replica)
    assert isinstance(engine, LmdeployProcessEngine)
    return engine


def test_a_planned_replica_is_launched_serves_reports_load_and_stops_with_its_children(tmp_path,
                                                                                     monkeypatch):
    engine = standin_engine(tmp_path, monkeypatch, STANDIN_RUNNING="2")

    async def scenario():
        await engine.start()
        assert await engine.health()
        load = engine.load()
        chunks = [c async for c in engine.generate(GenerationRequest("r", 3, prompt="hi"))]
        pid, child = engine.pid, int((tmp_path / "child.pid").read_text())
        await engine.stop()
        return load, chunks, pid, child

    load, chunks, pid, child = asyncio.run(scenario())
    assert (load.num_running, load.num_waiting, load.kv_cache_usage) == (2, 1, 0.25)
    assert "".join(c.text for c in chunks) == "abc" and chunks[-1].finish_reason == "length"
    seen = json.loads((tmp_path / "argv.json").read_text())
    argv = seen["argv"]
    assert argv[:3] == ["serve", "api_server", "/models/llama-awq"]
    flags = {argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}
    assert flags["--backend"] == "turbomind" and flags["--tp"] == "2"
    assert flags["--model-format"] == "awq" and flags["--quant-policy"] == "8"
    assert flags["--max-batch-size"] == "32" and flags["--session-len"] == "4096"
    assert flags["--model-name"] == "llama" and flags["--server-port"] == str(engine.launch.port)
    assert seen["CUDA_VISIBLE_DEVICES"] == "2,3" and seen["HF_HUB_OFFLINE"] == "1"  # GPUs 10, 11 of 8/node
    assert list(tmp_path.glob("lmdeploy-r3-*.log"))
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not alive(child), "stop must take TurboMind's workers with it"


def test_an_lmdeploy_that_refuses_its_arguments_fails_to_start_with_its_log(tmp_path, monkeypatch):
    engine = standin_engine(tmp_path, monkeypatch, extra_args=("--no-such-flag",))
    with pytest.raises(EngineStartError, match="lmdeploy exited with code 2.*unrecognized arguments"):
        asyncio.run(engine.start())


def test_a_replica_whose_process_dies_is_unhealthy_and_fails_requests(tmp_path, monkeypatch):
    engine = standin_engine(tmp_path, monkeypatch)

    async def scenario():
        await engine.start()
        os.killpg(engine.pid, 9)
        await asyncio.sleep(0.3)
        healthy = await engine.health()
        with pytest.raises(EngineDeadError, match="lmdeploy replica .* not running"):
            [c async for c in engine.generate(GenerationRequest("r", 3, prompt="hi"))]
        await engine.stop()
        return healthy

    assert asyncio.run(scenario()) is False


def test_a_missing_lmdeploy_and_replicas_turbomind_cannot_run_are_refused(tmp_path):
    spec = EngineSpec("lmdeploy", {"model": "m", "served_name": "m",
                                   "executable": str(tmp_path / "no-lmdeploy-here")})
    with pytest.raises(EngineStartError, match="not found.*--lmdeploy-executable"):
        asyncio.run(spec.build(INT4_INT8_TP2).start())
    with pytest.raises(EngineStartError, match="pipeline"):
        spec.build(Replica(0, (0, 1), ReplicaConfig("H100-80GB", 1, 2)))
    with pytest.raises(EngineStartError, match="needs 2"):
        spec.build(Replica(0, (0,), ReplicaConfig("H100-80GB", 2, 1)))
    with pytest.raises(EngineStartError, match="prefill replica of a disaggregated group"):
        spec.build(Replica(0, (0,), ReplicaConfig("H100-80GB"), role="prefill", group=0))


def test_serve_flags_become_the_lmdeploy_config_and_a_fleet_without_gpus_is_refused(tmp_path):
    from oserve.cli.main import build_parser
    from oserve.cli.serve_cmd import serve_config
    from oserve.common.errors import ConfigError
    from oserve.runtime.serve_setup import engine_spec

    def config(*flags):
        return serve_config(build_parser().parse_args(["serve", "--engine", "lmdeploy", *flags]))

    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    cfg = config("--plan", str(plan), "--hf-model", "/models/m", "--lmdeploy-executable", str(STANDIN),
                 "--lmdeploy-extra-args", "--cache-max-entry-count 0.5")
    spec = engine_spec(cfg, 2)
    assert spec.kind == "lmdeploy" and spec.options["model"] == "/models/m"
    assert spec.options["executable"] == str(STANDIN)
    assert spec.options["extra_args"] == ("--cache-max-entry-count", "0.5")
    with pytest.raises(ConfigError, match="NVIDIA GPUs"):
        engine_spec(config("--hf-model", "/models/m"), 1)
    with pytest.raises(ConfigError, match="--hf-model"):
        engine_spec(config("--plan", str(plan)), 1)
    with pytest.raises(ConfigError, match="--lmdeploy-extra-args"):
        config("--lmdeploy-extra-args", "'unclosed")


@pytest.mark.gpu
def test_a_real_turbomind_replica(tmp_path):
    """LMDeploy on a GPU: ``OSERVE_LMDEPLOY_MODEL`` (a local HF folder of a small model) served by a
    real ``lmdeploy serve api_server --backend turbomind`` with an INT8 KV cache, through the engine."""
    model = os.environ.get("OSERVE_LMDEPLOY_MODEL")
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("lmdeploy") is None or not torch.cuda.is_available() or not model:
        pytest.skip("needs a CUDA GPU, LMDeploy installed and OSERVE_LMDEPLOY_MODEL")
    replica = Replica(0, (0,), ReplicaConfig("H100-80GB", 1, 1, kv_cache_dtype="int8"))
    engine = EngineSpec("lmdeploy", {"model": model, "served_name": "m", "session_len": 2048,
                                     "log_dir": str(tmp_path), "startup_timeout_s": 900}).build(replica)

    async def scenario():
        await engine.start()
        try:
            assert await engine.health()
            chunks = [c async for c in engine.generate(GenerationRequest("r", 8, prompt="Hello"))]
        finally:
            await engine.stop()
        return chunks

    chunks = asyncio.run(scenario())
    assert "".join(c.text for c in chunks) and chunks[-1].finish_reason in ("length", "stop")
