"""The planner-budget and evaluation-identity scripts report a differing plan as different."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def _scenario(goodput: float, seconds: float) -> dict:
    return {"model": "m", "seconds": seconds, "git_revision": "x",
            "planners": {"oserve": {"deployment": "4x[TP4]", "goodput_scale": goodput,
                                    "planner_seconds": seconds, "probes": [{"scale": goodput, "ok": True}]}}}


def test_eval_identity_ignores_timings_and_reports_a_changed_result(tmp_path):
    ident = _script("slo_eval_identity")
    before, after, changed = (tmp_path / n for n in ("before", "after", "changed"))
    for d in (before, after, changed):
        d.mkdir()
    (before / "s.json").write_text(json.dumps(_scenario(1.5, 10.0)))
    (after / "s.json").write_text(json.dumps(_scenario(1.5, 3.0)))  # only the timings differ
    (changed / "s.json").write_text(json.dumps(_scenario(1.55, 10.0)))
    assert ident.main([str(before), str(after), "--committed", str(before)]) == 0
    out = tmp_path / "r.md"
    assert ident.main([str(before), str(changed), "--out", str(out)]) == 1
    assert "| s | NO |" in out.read_text() and "0 of 1 scenarios identical" in out.read_text()


def test_budget_report_marks_a_different_plan():
    budget = _script("planner_budget")
    run = {"deployment": "4x[TP4]", "predicted_goodput_scale": 2.0, "simulated_goodput_scale": 1.0,
           "confirmation": {"challenger": "4x[TP4]", "confirmed": True, "probes": 8, "requests": 4000}}
    row = {"model": "m", "trace": "t", "slo": "loose", "gpus": 16, "budget_s": 5.0, "after": run,
           "after_cpu_s": [4.0, 4.4, 4.2], "after_wall_s": [5.0], "before": run, "before_cpu_s": [5.0],
           "same_plan": False, "paired_cpu_ratio": 0.8}
    meta = {"models": "m", "traces": "t", "slos": "loose", "date": "d", "cpus": 2, "load_avg_1m": 1.0,
            "repeat": 3, "bytecode_cache": True}
    text = budget.render(meta, [row], True)
    assert "| 4.20 (4.00-4.40) |" in text and "| 0.80 | NO |" in text
    assert "Same plan in 0 of 1 paired cases." in text and "confirmed (8 probes of 4000 requests)" in text
