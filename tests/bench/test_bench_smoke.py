"""Smoke tests of the simulator benchmarks: each script's main() on a tiny configuration, into tmp_path.

They check that the scripts run end to end against the current package and write what they document;
the numbers themselves are the benchmarks' business (bench/results/).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))  # scripts may import their siblings
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_sim_speed_smoke(tmp_path):
    assert _script("sim_speed").main(["--requests", "300", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sim_speed.json").read_text())
    for planner in ("default", "oserve"):
        run = report["headline"][planner]
        assert run["requests"] == 300 and run["completed"] == 300 and run["events"] > 300
        assert 0.0 < run["step_timer_hit_rate"] <= 1.0
    assert [r["requests"] for r in report["by_requests"]] == [300]
    assert [r["replicas"] for r in report["by_replicas"]] == [2, 4, 8, 16]
    assert (tmp_path / "sim_speed.png").exists()


@pytest.fixture(scope="module")
def spatial_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("spatial")
    argv = ["--models", "llama-2-7b", "--gpus", "8", "--traces", "azure-code", "--duration-s", "60",
            "--rel-tol", "0.5", "--out", str(out)]
    assert _script("spatial_eval").main(argv) == 0
    return out


def test_sim_event_cost_smoke(tmp_path):
    """One tiny fleet, cold and warm, paired with the same tree as the baseline (so it must agree)."""
    import oserve

    src = str(Path(oserve.__file__).resolve().parents[1])
    assert _script("sim_event_cost").main(["--replicas", "2", "--min-requests", "200",
                                           "--requests-per-replica", "10", "--warm-repeats", "1",
                                           "--baseline-src", src, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "sim_event_cost.json").read_text())
    (row,) = report["rows"]
    assert row["replicas"] == 2 and row["requests"] == 200 and row["events"] > 200
    assert row["same_events_p99_area"] and row["warm_cpu_s"] > 0 and 0 < row["hit_rate"] <= 1
    assert "| 2 | 200 |" in (tmp_path / "sim_event_cost.md").read_text()


def test_spatial_eval_smoke(spatial_dir):
    doc = json.loads((spatial_dir / "llama-2-7b_8gpu_azure-code.json").read_text())
    assert "error" not in doc, doc.get("error")
    assert set(doc["max_sustainable"]) == {"oserve", "homogeneous", "default"}
    for search in doc["max_sustainable"].values():
        assert search["probes"] and search["best_scale"] >= 0.0
    assert all(len(points) == len(doc["curve_fractions"]) for points in doc["curves"].values())


def test_spatial_dispatch_ablation_smoke(spatial_dir, tmp_path):
    doc = json.loads((spatial_dir / "llama-2-7b_8gpu_azure-code.json").read_text())
    # the script only replays scenarios where OServe's deployment differs from homogeneous: label the
    # tiny scenario's oserve plan so that it has one row to compute
    doc["plans"]["oserve"]["deployment"] = "smoke: " + doc["plans"]["oserve"]["deployment"]
    (tmp_path / "scenario.json").write_text(json.dumps(doc))
    assert _script("spatial_dispatch_ablation").main(["--spatial", str(tmp_path), "--out",
                                                      str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "spatial_dispatch_ablation.json").read_text())
    assert len(rows) == 1 and rows[0]["oserve_spillover_p99_e2e_s"] > 0
    assert (tmp_path / "spatial_dispatch_ablation.md").exists()


def test_spatial_capacity_smoke(tmp_path):
    argv = ["--models", "llama-2-7b", "--traces", "azure-code", "--duration-s", "120", "--out",
            str(tmp_path)]
    assert _script("spatial_capacity").main(argv) == 0
    text = (tmp_path / "spatial_capacity.md").read_text()
    assert "### llama-2-7b, azure-code" in text and "**" in text  # each type's best config marked


def test_adaptive_bench_smoke(tmp_path):
    argv = ["--scenarios", "diurnal13", "--duration-s", "240", "--out", str(tmp_path / "adaptive")]
    assert _script("adaptive_bench").main(argv) == 0
    (doc,) = json.loads((tmp_path / "adaptive_summary.json").read_text())["searched"]
    assert set(doc["modes"]) == {"static-peak", "elastic"}
    assert doc["modes"]["elastic"]["summary"]["completed"] == doc["requests"]
    assert doc["modes"]["elastic"]["gpu_hours"] <= doc["modes"]["static-peak"]["gpu_hours"] + 1e-9
    assert (tmp_path / "adaptive" / "diurnal13.png").exists()
    assert doc["rate_profile"]["peak_gpus"] == doc["modes"]["static-peak"]["num_gpus_initial"]
    assert doc["rate_profile"]["ideal_ratio"] >= 1.0
    probes = ["--scenarios", "stable70", "--modes", "static-initial", "--scales", "0.5,1",
              "--duration-s", "120", "--out", str(tmp_path / "adaptive")]
    assert _script("adaptive_bench").main(probes) == 0
    doc = json.loads((tmp_path / "adaptive" / "stable70__probes__static-initial.json").read_text())
    assert [p["scale"] for p in doc["probes"]["static-initial"]] == [0.5, 1.0]
    assert all(len(p["per_type"]) == 4 for p in doc["probes"]["static-initial"])


def test_adaptive_rate_profile_known_answer():
    """The proportional-resize estimate: 4 peak-sized GPUs, three windows at the peak rate and one at half
    of it need 4, 4, 4, 2 GPUs: 16 GPU-windows of the static fleet over 14, 1.14x."""
    from dataclasses import replace

    from oserve.sim.experiment import PreparedTrace
    from oserve.workload.trace import Trace

    bench = _script("adaptive_bench")
    setup = bench._setup("diurnal13", duration_s=60.0)
    rates = [10, 10, 5, 10]  # requests per second in each 60-s window
    arrivals = np.concatenate([w * 60.0 + np.arange(r * 60) / r for w, r in enumerate(rates)])
    ones = np.full(len(arrivals), 100)
    trace = Trace(arrivals, ones, ones, "windows")
    p = setup.prepared
    setup = replace(setup, prepared=PreparedTrace(trace, p.types, p.types.stats(trace), 0))
    rp = bench.rate_profile(setup, peak_gpus=4)
    assert rp["peak_window_rps"] == pytest.approx(10) and rp["trough_window_rps"] == pytest.approx(5)
    assert rp["ideal_gpu_hours"] == pytest.approx(14 * 60 / 3600)
    assert rp["ideal_ratio"] == pytest.approx(16 / 14)


def test_convcode_phases_oracle_pools_per_type_and_beats_every_single_fleet():
    """The switching oracle pools each type's attainment over the two phases by request counts, picks the
    best pair of fleets, and is never below the best single fleet (a pair may repeat a fleet)."""
    tool = _script("convcode_phases")

    def probe(att, counts):
        return {"per_type": att, "counts": counts}

    # fleet A: good on conv, poor on code; B: the reverse; C: middling on both
    doc = {"scales": [1.0], "fleets": {
        "A": {"phases": {"conv": {"probes": [probe([1.0, 1.0], [90, 10])]},
                         "code": {"probes": [probe([0.5, 0.8], [10, 90])]}}},
        "B": {"phases": {"conv": {"probes": [probe([0.8, 0.5], [90, 10])]},
                         "code": {"probes": [probe([1.0, 1.0], [10, 90])]}}},
        "C": {"phases": {"conv": {"probes": [probe([0.9, 0.9], [90, 10])]},
                         "code": {"probes": [probe([0.9, 0.9], [10, 90])]}}}}}
    out = tool.oracle(doc, 0.9)
    (row,) = out["rows"]
    assert row["best_per_phase"] == {"conv": "A", "code": "B"}
    assert row["switching_oracle"] == pytest.approx([1.0, 1.0])
    assert row["best_single_fleet"] == "C" and row["best_single"] == pytest.approx([0.9, 0.9])
    # pooled by counts: A alone is (90 * 1.0 + 10 * 0.5) / 100 for type 0
    assert tool._pooled(*(doc["fleets"]["A"]["phases"][ph]["probes"][0] for ph in ("conv", "code"))) == \
        pytest.approx([0.95, (10 * 1.0 + 90 * 0.8) / 100])
    assert out["switching_goodput"] == 1.0 and out["single_goodput"] == 1.0


def test_convcode_phases_default_probes_are_the_committed_bench_run():
    """The default ``--probes`` is the committed conv->code run, with static-initial's probe scales
    (it pointed at a per-mode file the rerun replaced)."""
    tool = _script("convcode_phases")
    static = json.loads(tool.STATIC_PROBES.read_text())["modes"]["static-initial"]
    assert static["probes"] and all(p["scale"] > 0 for p in static["probes"])


def test_sim_identity_smoke(tmp_path):
    tool = _script("sim_identity")
    a, b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    assert tool.main(["dump", str(a), "--requests", "200"]) == 0
    assert tool.main(["compare", str(a), str(a)]) == 0
    runs = pickle.loads(a.read_bytes())
    assert {"headline_default", "dispatch_spillover", "prefill_first"} <= set(runs)
    runs["dispatch_spillover"]["finish_s"][3] += 1e-9
    b.write_bytes(pickle.dumps(runs))
    assert tool.main(["compare", str(a), str(b)]) == 1


def test_engines_bench_reads_the_bench_serve_report():
    """``bench/vllm_engines.py`` reads ``oserve bench serve --json``: its keys are loadgen's (the
    shared latency summary at the top level), not a nested ``ttft_s`` dict (a KeyError it once hit)."""
    from oserve.runtime.loadgen import BenchConfig, RequestRecord, summarize

    records = [RequestRecord(status="ok", ttft_s=0.1 * i, e2e_s=1.0 + 0.1 * i, output_tokens=11)
               for i in range(1, 5)]
    config = BenchConfig(url="http://127.0.0.1:1")
    report = json.loads(summarize(config, "m", records, 2.0).to_json())
    got = _script("vllm_engines").percentiles(report, "ttft")
    assert got["p50"] == pytest.approx(0.25) and got["mean"] == pytest.approx(0.25)
    assert set(got) == {"p50", "p90", "p99", "mean"}
    assert _script("vllm_engines").percentiles(report, "tpot")["p50"] == pytest.approx(0.1)


def test_sim_vs_vllm_breakdown_pairs_lone_requests(tmp_path):
    """``bench/sim_vs_vllm_cpu.py``'s TTFT breakdown: a request is alone when every earlier one had
    finished; the runs are paired by request, the gateway's refusals (429) left out on both sides."""
    mod = _script("sim_vs_vllm_cpu")
    assert mod.alone_at_arrival(np.array([0.0, 1.0, 5.0, 6.0]), np.array([2.0, 3.0, 5.5, 7.0])).tolist() == [
        True, False, True, True]
    real = tmp_path / "real.csv"
    real.write_text("request,sent_s,status,ttft_s,e2e_s,input_tokens,output_tokens,type\n"
                    "0,0.0,ok,0.5,2.0,100,8,0\n1,1.0,ok,1.0,3.0,100,8,0\n2,1.5,http_429,,,100,0,0\n"
                    "3,10.0,ok,0.4,1.0,50,8,0\n")
    sim = tmp_path / "sim.csv"
    sim.write_text("request,arrival_s,first_token_s,finish_s,ttft_s\n0,0.0,0.6,2.0,0.6\n1,1.0,2.2,3.5,1.2\n"
                   "2,1.5,3.0,4.0,1.5\n3,10.0,10.6,11.0,0.6\n")
    step = {"step_overhead_s": 0.1, "prefill_s_per_token": 0.004}  # no attention term: an old catalog
    got = mod.ttft_breakdown(real, sim, {100: 100, 50: 60}, step)
    assert got["refused_measured"] == 1 and got["alone_simulated"] == 2
    assert got["alone_in_both"]["requests"] == 2 and got["alone_measured"]["requests"] == 2
    # request 0: 0.6 / 0.5; request 3: 0.6 / 0.4 -> median 1.35; lone prices 0.5 and 0.34 s
    assert got["alone_in_both"]["median_ratio_sim_over_measured"] == pytest.approx(1.35)
    assert got["alone_in_both"]["median_ratio_lone_price_over_measured"] == pytest.approx(
        (0.5 / 0.5 + 0.34 / 0.4) / 2)
    assert got["queued_or_shared_in_either"]["median_ratio_sim_over_measured"] == pytest.approx(1.2)
