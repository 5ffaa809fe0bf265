"""The CLI, run as a user runs it: the installed console script in a subprocess."""

import json
import subprocess
import sys

import pytest


def oserve(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "oserve.cli.main", *args], capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_plan_json_has_the_documented_fields():
    out = json.loads(oserve("plan", "--cluster", "2x8xH100", "--model", "llama-2-70b", "--trace",
                            "azure-conv", "--json").stdout)
    for key in ("replicas", "dispatch", "demand_scale", "planner_seconds"):
        assert key in out
    assert sum(len(r["gpus"]) for r in out["replicas"]) <= 16
    assert all({"gpus", "tp", "pp", "gpu_type"} <= set(r) for r in out["replicas"])
    assert out["demand_scale"] > 1


def test_plan_text_shows_deployment_and_dispatch():
    text = oserve("plan", "--cluster", "1x8xH100", "--model", "opt-30b", "--planner", "homogeneous").stdout
    assert "Deployment:" in text and "Dispatch" in text and "Predicted capacity" in text


def test_costmodel_validate_json(profiles_dir):
    out = json.loads(oserve("costmodel", "validate", "--profile",
                            str(profiles_dir / "h100_operator_profile.csv"), "--json").stdout)
    assert out["rows"] > 2000 and out["median_rel_err"] <= 0.10 and out["p90_rel_err"] <= 0.25
    assert set(out["per_kind"]) == {"gemm", "prefill", "decode"}


@pytest.mark.parametrize("args, message", [
    (("plan", "--cluster", "2x8xNOPE"), "unknown GPU type"),
    (("plan", "--model", "gpt-9"), "unknown model"),
    (("plan", "--trace", "missing.csv"), "neither a file"),
])
def test_user_errors_are_one_clear_line(args, message):
    proc = oserve(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, value", [("--min-gain", "-0.1"), ("--plan-tpot", "-1")])
def test_negative_planning_bounds_are_rejected(flag, value):
    proc = oserve("plan", flag, value, check=False)
    assert proc.returncode == 2 and flag in proc.stderr
