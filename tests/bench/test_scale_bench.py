"""Smoke test of bench/scale_bench.py on a tiny configuration: every section runs and is reported."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_bench_tiny_run_writes_every_section(tmp_path, monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "QUICK", {"one": (16,), "four": (32,), "requests": (300,), "replicas": (2,)})
    assert bench.main(["--quick", "--max-requests", "300", "--trace-rows", "3000",
                       "--requests-per-replica", "150", "--out", str(tmp_path), "--name", "tiny"]) == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert [(r["gpu_types"], r["gpus"], r["planner"]) for r in report["planner"]] == \
        [(1, 16, p) for p in bench.PLANNERS] + [(4, 32, p) for p in bench.PLANNERS]
    assert all(r["demand_scale"] > 0 and r["cpu_s"] > 0 and "x[" in r["deployment"]
               for r in report["planner"])
    loads = report["trace_loading"]
    assert loads["vectorised"]["rows"] == loads["row loop"]["rows"] == 3000
    sims = report["simulator"]["by_requests"] + report["simulator"]["by_replicas"]
    assert [s["requests"] for s in sims] == [300, 300]
    assert all(s["completed"] == s["requests"] and s["events"] > s["requests"] and s["peak_rss_mb"] > 0
               for s in sims)
    assert report["simulator"]["by_replicas"][0]["replicas"] == 2
    text = (tmp_path / "tiny.md").read_text()
    assert "### Planner" in text and "### Simulator vs replicas" in text
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    # rerun one section, the others taken from the first report
    assert bench.main(["--quick", "--max-requests", "300", "--requests-per-replica", "150", "--sections",
                       "trace", "--trace-rows", "2000", "--reuse", str(tmp_path / "tiny.json"),
                       "--out", str(tmp_path), "--name", "again"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["trace_loading"]["vectorised"]["rows"] == 2000
    assert again["planner"] == report["planner"] and again["simulator"] == report["simulator"]
    assert again["reused"]["utc"] == report["utc"]


def test_tiled_trace_repeats_lengths_and_gaps():
    bench = _load()
    from oserve.workload import load_trace

    base = load_trace("azure-conv")
    tiled = bench.tiled_trace(len(base) * 2 + 5, base)
    assert len(tiled) == len(base) * 2 + 5
    assert (tiled.input_tokens[len(base):2 * len(base)] == base.input_tokens).all()
    gaps = tiled.arrival_s[1:] - tiled.arrival_s[:-1]
    assert gaps.min() >= 0 and abs(gaps[len(base) - 1] - (base.duration_s / (len(base) - 1))) < 1.0
