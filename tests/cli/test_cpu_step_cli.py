"""A vLLM-CPU fleet on the command line: fit a step model from step rows, validate it, simulate with it."""

import csv
import json

import pytest

from .test_cli import oserve


def test_fit_validate_and_simulate_a_cpu_replica(tmp_path):
    profile = tmp_path / "steps.csv"
    with profile.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gpu", "kind", "model", "tp", "a", "b", "ms"])
        w.writerows(["vllm-cpu-1core", "step_prefill", "smollm2-135m", 1, p, 1, 200 + 4 * p]
                    for p in (50, 200, 800))
        w.writerows(["vllm-cpu-1core", "step_decode", "smollm2-135m", 1, b, 60, 200 + 2 * b]
                    for b in (1, 4, 8))
    fitted = tmp_path / "cpu.yaml"
    assert "200.0 ms + 4.00 ms/prefill token" in oserve("costmodel", "fit", "--profile", str(profile),
                                                        "--out", str(fitted)).stdout
    report = json.loads(oserve("costmodel", "validate", "--profile", str(profile), "--gpus", str(fitted),
                               "--json").stdout)
    assert report["max_rel_err"] < 1e-6 and set(report["per_kind"]) == {"step_prefill", "step_decode"}
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0,100,5\n100,300,5\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "model": "smollm2-135m", "planner": "cpu", "types": ["T0"], "type_rates_rps": [1.0],
        "replicas": [{"replica_id": 0, "gpus": [0], "tp": 1, "pp": 1, "gpu_type": "vllm-cpu-1core",
                      "precision": "fp32"}],
        "capacity_rps": [[1.0]], "dispatch": [[1.0]], "demand_scale": 1.0, "utilisation": [0.0],
        "bottlenecks": []}))
    oserve("simulate", "--plan", str(plan), "--planner", "", "--trace", str(trace), "--model",
           "smollm2-135m", "--gpus", str(fitted), "--types", "1", "--out", str(tmp_path / "sim"),
           "--no-progress")
    with (tmp_path / "sim" / "records_plan_x1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # alone on the replica: TTFT = one prefill step, TPOT = one decode step of batch 1 (the simulator's
    # step timer rounds prefill token totals above 256 to a ~1% grid)
    assert [float(r["ttft_s"]) for r in rows] == pytest.approx([0.2 + 0.4, 0.2 + 1.2], rel=0.01)
    assert [float(r["tpot_s"]) for r in rows] == pytest.approx([0.202, 0.202], abs=2e-3)
