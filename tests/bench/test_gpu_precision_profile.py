"""Smoke test of the GPU precision profile script on the CPU: it runs, and oserve reads what it writes."""

import importlib.util
import json
from pathlib import Path

import pytest

from oserve.costmodel.calibration import read_profile

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_precision_profile.py"


def test_cpu_smoke_run_writes_a_profile_oserve_can_read(tmp_path):
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("gpu_precision_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "profile.csv"
    assert module.main(["--device", "cpu", "--budget-s", "120", "--out", str(out)]) == 0
    rows = read_profile(out)  # the precision kinds are known to the calibration reader
    kinds = {r.kind for r in rows}
    assert {"gemm_int8", "decode_kv_int8", "decode_kv_fp8"} <= kinds
    assert all(r.ms > 0 for r in rows)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["rows"] == len(rows) and meta["gpu"] == "cpu"
    # kernels this torch build lacks on the CPU are reported, not silently missing
    assert set(meta["skipped"]) | kinds >= {"gemm_fp8", "gemm_int8", "gemm_w4a16"}
