"""The latency/SLO summary shared by simulate, simulate-adaptive and bench serve."""

import math

import numpy as np
import pytest

from oserve.workload.latency_summary import latency_summary


def test_percentiles_over_completed_requests_and_attainment_over_all():
    ttft = [0.1, 0.2, 0.3, math.nan]
    tpot = [0.01, math.nan, 0.05, math.nan]  # request 1 has a one-token output
    e2e = [1.0, 0.2, 2.0, math.nan]
    done = [True, True, True, False]
    s = latency_summary(ttft, tpot, e2e, done, slo_ttft_s=0.25, slo_tpot_s=0.02)
    assert s["p50_ttft_s"] == pytest.approx(0.2) and s["mean_e2e_s"] == pytest.approx(3.2 / 3)
    assert s["p99_tpot_s"] == pytest.approx(np.percentile([0.01, 0.05], 99))
    # requests 0 and 1 meet both bounds (1 has no TPOT); 2 misses TTFT; 3 never completed
    assert s["slo_attainment"] == 0.5
    assert set(s) == {f"{k}_{m}" for k in ("p50", "p90", "p99", "mean")
                      for m in ("e2e_s", "ttft_s", "tpot_s")} | {"slo_attainment"}
    assert latency_summary(ttft, tpot, e2e, done)["slo_attainment"] is None


def test_per_type_entries_and_empty_types():
    s = latency_summary([0.1, 0.4, 0.2], [0.01, 0.02, 0.03], [1.0, 4.0, 2.0], [True, True, True],
                        slo_ttft_s=0.3, type_id=[0, 1, 0], type_names=["short", "long", "huge"])
    assert list(s["per_type"]) == ["short", "long", "huge"]
    short, long_, huge = (s["per_type"][k] for k in ("short", "long", "huge"))
    assert short["requests"] == 2 and short["p50_e2e_s"] == pytest.approx(1.5)
    assert short["slo_attainment"] == 1.0 and long_["slo_attainment"] == 0.0
    assert huge["requests"] == 0 and huge["p99_ttft_s"] is None and huge["slo_attainment"] is None


def test_misaligned_arrays_are_refused():
    with pytest.raises(ValueError, match="length"):
        latency_summary([0.1], [0.1, 0.2], [1.0], [True])
