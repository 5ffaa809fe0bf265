"""SLO attainment of simulated requests and the goodput-scale search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tests.sim.factories import make_sim, run

from oserve.cli.main import main
from oserve.sim.goodput import search_goodput_scale
from oserve.sim.metrics import Attainment, slo_attainment


def test_attainment_counts_queueing_drops_and_types():
    # one replica, 10 ms steps, one seat: the second request of a pair waits for the first
    sim = make_sim(step_s=0.01, max_num_seqs=1, drain_s=0.5, weights=((1.0,), (1.0,)))
    res = run(sim, [0.0, 0.0, 0.0], [10, 10, 10], [5, 5, 500], types=[0, 1, 1])
    ttft_bound = np.full(3, 0.015)  # first request: 1 step; second: waits 5 steps
    att = slo_attainment(res, ttft_bound, np.full(3, 1.0), 2)
    assert att.per_type == (1.0, 0.0) and att.requests_per_type == (1, 2)
    assert att.overall == pytest.approx(1 / 3)
    assert not att.meets(0.5) and att.meets(0.0)
    assert not res.completed[2]  # unfinished at the horizon: it misses whatever its bounds


@pytest.mark.parametrize("knee", [0.3, 1.0, 2.7, 9.5])
def test_search_finds_the_knee_within_three_percent(knee):
    def evaluate(scale):
        a = 0.95 if scale <= knee else 0.5
        return Attainment(a, (a, 0.99), (10, 10)), None

    result = search_goodput_scale(evaluate, 0.9)
    assert knee / 1.03 <= result.scale <= knee
    assert result.attainment.per_type[0] == 0.95
    assert len(result.probes) <= 12


def test_search_reports_zero_when_nothing_is_good():
    result = search_goodput_scale(lambda s: (Attainment(0.1, (0.1,), (5,)), None), 0.9)
    assert result.scale == 0.0 and result.attainment is None


def test_simulate_goodput_json(capsys):
    code = main(["simulate", "--cluster", "1x8xH100-80GB", "--model", "llama-2-70b", "--trace",
                 "azure-conv", "--time-range", "0:60", "--planner", "default", "--slo", "loose",
                 "--goodput", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    res = report["results"]["default"]
    assert res["goodput_scale"] > 0
    att = res["attainment_at_goodput"]
    assert len(att["per_type"]) == len(report["types"])
    assert all(a is None or a >= 0.9 for a in att["per_type"])
    assert any(not p["ok"] for p in res["probes"])  # the bracket was closed from above
    assert len(res["slo_attainment_per_type"]) == len(report["types"])


def test_goodput_needs_an_slo(capsys):
    assert main(["simulate", "--cluster", "1x8xH100-80GB", "--time-range", "0:30", "--planner", "default",
                 "--goodput"]) == 2
    assert "--goodput needs an SLO" in capsys.readouterr().err


def test_bad_slo_file_is_named_by_both_commands(tmp_path, capsys):
    bad = tmp_path / "slo.yaml"
    bad.write_text("default:\n  ttft_s: 2\n  tpot_s: -0.1\n")
    for cmd in ("simulate", "plan"):
        assert main([cmd, "--cluster", "1x8xH100-80GB", "--trace", "azure-conv", "--slo", str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"{bad}:3: field 'default.tpot_s' must be positive" in err
