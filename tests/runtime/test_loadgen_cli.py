"""The load generator against a real gateway, and the serve / bench serve commands."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from oserve.cli.main import build_parser, main
from oserve.cli.serve_cmd import usage_banner
from oserve.common.errors import ConfigError
from oserve.runtime.loadgen import (
    BenchConfig,
    RequestRecord,
    check_target,
    run_bench,
    summarize,
    synthetic_prompt,
)
from oserve.workload import load_trace
from oserve.workload.trace import Trace

from .factories import MODEL


def small_trace(n: int = 30) -> Trace:
    return Trace(np.linspace(0.0, 1.0, n), np.full(n, 40), np.full(n, 5), "small")


def test_bench_replays_a_trace_and_reports_percentiles(gateway):
    server, _, _ = gateway
    config = BenchConfig(url=server.base_url, rate_scale=4.0, max_requests=20, max_duration_s=20.0)
    report = asyncio.run(run_bench(config, small_trace()))
    assert (report.num_sent, report.num_ok, report.model) == (20, 20, MODEL)
    # the shared latency summary's keys, the same as `oserve simulate` reports
    doc = json.loads(report.to_json())
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert all(doc[f"{k}_{metric}"] > 0 for k in ("p50", "p90", "p99", "mean"))
    assert sum(t["requests"] for t in doc["per_type"].values()) == 20
    assert report.output_tokens_per_s > 0 and report.duration_s < 10
    assert doc["num_ok"] == 20 and "TTFT" in report.to_text()


def test_bench_closed_loop_keeps_at_most_n_requests_in_flight(gateway):
    server, runtime, _ = gateway
    peak = []

    async def bench_and_watch():
        config = BenchConfig(url=server.base_url, max_requests=12, concurrency=3)
        task = asyncio.create_task(run_bench(config, small_trace()))
        while not task.done():
            peak.append(runtime.router.num_inflight)
            await asyncio.sleep(0)
        return await task

    report = asyncio.run(bench_and_watch())
    assert (report.num_sent, report.num_ok) == (12, 12) and max(peak) <= 3
    with pytest.raises(ConfigError, match="--concurrency"):
        asyncio.run(run_bench(BenchConfig(url=server.base_url, concurrency=0), small_trace()))


def test_bench_counts_failures_by_kind(gateway):
    server, _, _ = gateway
    config = BenchConfig(url=server.base_url, model="wrong-model", max_requests=3, rate_scale=100.0,
                         endpoint="chat")
    report = asyncio.run(run_bench(config, small_trace()))
    assert report.num_ok == 0 and report.failures == {"http_400": 3}


def test_bench_targets_loopback_only_unless_allowed():
    check_target("http://127.0.0.1:8000", allow_remote=False)
    check_target("http://localhost:8000", allow_remote=False)
    with pytest.raises(ConfigError, match="--url: .*loopback"):
        check_target("http://10.1.2.3:8000", allow_remote=False)


def test_summary_and_prompt_helpers():
    records = [RequestRecord("ok", 0.1, 1.1, 11), RequestRecord("ok", 0.3, 0.3, 1),
               RequestRecord("http_429")]
    report = summarize(BenchConfig(url="http://127.0.0.1:1", slo_ttft_s=0.2), "m", records, 2.0)
    assert report.num_ok == 2 and report.failures == {"http_429": 1}
    assert report.latency["p50_tpot_s"] == pytest.approx(0.1)
    assert report.latency["slo_attainment"] == pytest.approx(1 / 3)  # the 429 counts as a miss
    assert "SLO attainment 33.3%" in report.to_text()
    assert report.throughput_rps == 1.0
    assert len(synthetic_prompt(100)) == pytest.approx(400, abs=8)


def test_cli_registers_serve_and_bench_serve():
    parser = build_parser()
    args = parser.parse_args(["serve", "--engine", "fake", "--port", "0"])
    assert args.engine == "fake" and args.func.__name__ == "run_serve"
    args = parser.parse_args(["bench", "serve", "--url", "http://127.0.0.1:1", "--rate-scale", "2"])
    assert args.rate_scale == 2.0 and args.func.__name__ == "run_bench_serve"


def test_bench_serve_command_prints_json(gateway, capsys, tmp_path):
    server, _, _ = gateway
    out = tmp_path / "bench.json"
    code = main(["bench", "serve", "--url", server.base_url, "--trace", "azure-conv",
                 "--rate-scale", "50", "--max-requests", "10", "--max-output-tokens", "4", "--json",
                 "--out", str(out), "--types", "2", "--slo-ttft-s", "60", "--records",
                 str(tmp_path / "records.csv"), "--max-input-tokens", "300"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_ok"] == 10 and doc["slo_attainment"] == 1.0 and set(doc["per_type"]) == {"T0", "T1"}
    assert json.loads(out.read_text())["num_sent"] == 10 and "records" not in doc
    # one row per request in trace order: sent at the trace's arrival times (scaled), the clipped prompt
    with (tmp_path / "records.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    trace = load_trace("azure-conv").scaled(50).head(10)
    assert [int(r["request"]) for r in rows] == list(range(10)) and {r["status"] for r in rows} == {"ok"}
    assert [int(r["input_tokens"]) for r in rows] == [min(int(n), 300) for n in trace.input_tokens]
    sent = np.array([float(r["sent_s"]) for r in rows])
    assert np.all(sent >= trace.arrival_s - 1e-6) and np.all(sent < trace.arrival_s + 0.5)
    assert all(0 < float(r["ttft_s"]) <= float(r["e2e_s"]) for r in rows)
    assert [int(r["output_tokens"]) for r in rows] == [min(int(n), 4) for n in trace.output_tokens]


def test_banner_shows_url_curl_and_openai_example():
    text = usage_banner("http://127.0.0.1:8000", "SmolLM2-135M-Instruct")
    assert "http://127.0.0.1:8000/v1" in text and "curl http://127.0.0.1:8000/v1/chat/completions" in text
    assert "OpenAI(base_url='http://127.0.0.1:8000/v1'" in text


def serve_subprocess(*extra: str) -> tuple[subprocess.Popen, str]:
    """Start ``oserve serve --port 0`` and read the URL it prints."""
    proc = subprocess.Popen([sys.executable, "-m", "oserve.cli.main", "serve", "--port", "0",
                             "--log-level", "warning", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("oserve: serving"):
            return proc, line.split(" at ")[1].strip().removesuffix("/v1")
    proc.wait(timeout=10)
    raise AssertionError(f"oserve serve exited with {proc.returncode}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_serve_command_with_fake_engines_answers_the_openai_client():
    from .factories import openai_client

    proc, url = serve_subprocess("--engine", "fake", "--replicas", "2")
    try:
        class Server:
            base_url = url
        client = openai_client(Server)
        reply = client.chat.completions.create(model="oserve-fake", max_tokens=3,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens == 3
    finally:
        stop(proc)


def test_serve_setup_plans_a_gpu_fleet_of_cost_model_timed_fakes():
    from oserve.cli.serve_cmd import serve_config
    from oserve.runtime.serve_setup import build_runtime

    args = build_parser().parse_args(["serve", "--engine", "fake", "--cluster", "1x8xH100", "--model",
                                      "llama-2-13b", "--replan", "--replan-cooldown-s", "30"])
    runtime = build_runtime(serve_config(args))
    plan = runtime.router.table.plan
    assert plan.num_gpus <= 8 and plan.planner == "oserve" and len(plan.type_names) == 4
    engines = [h.engine for h in runtime.router.table.handles]
    assert all(e.cost.decode_s_per_token > 0 and e.cost.prefill_s_per_token > 0 for e in engines)
    policy = runtime.controller.policy  # --switch-policy reactive: the drift gate before decide
    assert policy is not None and policy.gate.cooldown_s == 30.0 and policy.params.min_gap_s == 30.0
    assert runtime.model_name == "llama-2-13b"


def test_serve_with_a_plan_file_times_fakes_as_the_plans_model(tmp_path):
    """Before: --engine fake --plan FILE (no --cluster) ran every replica at the fake default timing."""
    from oserve.cli.serve_cmd import serve_config
    from oserve.costmodel.replica_config import ReplicaConfig
    from oserve.costmodel.setup import CostModelConfig
    from oserve.runtime.fake_engine import FakeCost, fake_cost_from_model
    from oserve.runtime.serve_setup import build_runtime
    from oserve.runtime.static_plan import static_plan

    configs = [ReplicaConfig("H100-80GB", tp=2), ReplicaConfig("H100-80GB", tp=4)]
    names = [f"type{i}" for i in range(4)]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(static_plan("llama-2-13b", configs, names).to_dict()))
    runtime = build_runtime(serve_config(build_parser().parse_args(
        ["serve", "--engine", "fake", "--plan", str(path)])))
    cost = CostModelConfig(model="llama-2-13b").resolve()[2]
    engines = [h.engine for h in runtime.router.table.handles]
    assert [e.cost for e in engines] == [fake_cost_from_model(cost, c) for c in configs]
    assert engines[0].cost != engines[1].cost and FakeCost() not in [e.cost for e in engines]
