import json

import pytest

from oserve.cli.main import main


def test_forecast_eval_json_baselines(capsys):
    assert main(["forecast", "eval", "--trace", "azure-code", "--window-s", "60",
                 "--forecasters", "last,moving-avg,ewma", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["window_s"] == 60 and doc["num_test_windows"] >= 2
    assert [m["name"] for m in doc["models"]] == ["last", "moving-avg", "ewma"]
    assert all(len(m["rrmse_per_type"]) == 4 for m in doc["models"])


def test_forecast_eval_rejects_unknown_model(capsys):
    assert main(["forecast", "eval", "--trace", "azure-code", "--window-s", "60",
                 "--forecasters", "prophet"]) == 2


def test_forecast_train_then_eval_loaded(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "m.pt"
    assert main(["forecast", "train", "--trace", "azure-code", "--window-s", "30", "--epochs", "5",
                 "--out", str(out)]) == 0
    assert main(["forecast", "eval", "--trace", "azure-code", "--window-s", "30", "--forecasters",
                 "last,lstm", "--lstm", str(out), "--out", str(tmp_path / "ev")]) == 0
    text = capsys.readouterr().out
    assert "lstm(loaded)" in text
    assert (tmp_path / "ev" / "forecast_eval.png").exists()


def test_forecast_synth_writes_a_loadable_trace(tmp_path, capsys):
    from oserve.workload import load_trace

    out = tmp_path / "syn.csv"
    assert main(["forecast", "synth", "--hours", "0.5", "--period-s", "3600", "--out", str(out)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert len(load_trace(out)) > 1000
