"""`oserve simulate` end to end on a short window of the bundled trace."""

from __future__ import annotations

import json

from oserve.cli.main import main


def test_simulate_json_and_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["simulate", "--cluster", "1x8xH100-80GB", "--model", "llama-2-70b", "--trace",
                 "azure-conv", "--time-range", "0:120", "--planner", "default,homogeneous",
                 "--rate-scale", "1,2", "--slo-ttft-s", "1", "--slo-tpot-s", "0.1", "--json",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for planner in ("default", "homogeneous"):
        res = report["results"][planner]
        for key in ("p99_e2e_s", "p50_e2e_s", "p99_ttft_s", "throughput_rps", "completed", "dropped"):
            assert key in res
        assert res["completed"] + res["dropped"] == report["requests"]
        assert set(res["by_rate_scale"]) == {"1.0", "2.0"}
    for name in ("results.json", "config.json", "latency_cdf.png", "p99_vs_rate.png",
                 "records_default_x1.csv", "records_homogeneous_x2.csv", "replicas_default_x1.csv"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and "git_revision" in config
    header = (out / "records_default_x1.csv").read_text().splitlines()[0]
    assert header.startswith("request,arrival_s,first_token_s,finish_s,ttft_s,tpot_s,e2e_s")


def test_simulate_table_and_bad_planner(capsys):
    assert main(["simulate", "--cluster", "1x8xH100-80GB", "--time-range", "0:60", "--planner",
                 "default"]) == 0
    assert "P99 e2e" in capsys.readouterr().out
    assert main(["simulate", "--cluster", "1x8xH100-80GB", "--planner", "nonsense"]) == 2
    assert "unknown planner" in capsys.readouterr().err
