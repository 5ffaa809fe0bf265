"""Number formats on the command line: plan with allowed formats, flags checked, factors shown."""

import json

from oserve.planner.plan import Plan

from .test_cli import oserve


def test_plan_with_formats_flags_uncalibrated_factors_and_reloads(tmp_path):
    out = oserve("plan", "--cluster", "1x4xH100", "--model", "llama-2-70b", "--trace", "azure-conv",
                 "--weight-formats", "bf16,fp8", "--kv-formats", "bf16,fp8", "--json").stdout
    doc = json.loads(out)
    formats = {(r["weight_format"], r["kv_cache_dtype"]) for r in doc["replicas"]}
    assert formats and all(w in ("bf16", "fp8") and kv in ("bf16", "fp8") for w, kv in formats)
    if formats != {("bf16", "bf16")}:
        assert doc["uncalibrated"] and all("uncalibrated" in n for n in doc["uncalibrated"])
    path = tmp_path / "plan.json"
    path.write_text(out)
    assert {(r.config.weight_format, r.config.kv_cache_dtype) for r in Plan.load(path).replicas} == formats


def test_bad_format_is_one_line_naming_the_flag():
    proc = oserve("plan", "--cluster", "1x8xH100", "--model", "llama-2-7b", "--trace", "azure-conv",
                  "--weight-formats", "bf16,nf4", check=False)
    assert proc.returncode == 2
    assert "--weight-formats" in proc.stderr and "nf4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_costmodel_formats_marks_what_is_assumed():
    doc = json.loads(oserve("costmodel", "formats", "--json").stdout)
    assert doc["W:bf16 KV:bf16"]["weight bytes/param"] == {"value": 2.0, "source": "exact", "note": ""}
    assert doc["W:fp8 KV:bf16"]["GEMM efficiency"]["source"] == "assumed"
    assert doc["W:int4 KV:int8"]["GEMM compute overhead"]["source"] == "assumed"
