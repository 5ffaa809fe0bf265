import json

from oserve.cli.main import main


def test_transfer_plan_json(capsys):
    assert main(["transfer-plan", "--cluster", "2x8xH100", "--model", "llama-2-70b", "--from", "TP8x2",
                 "--to", "TP4x4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["lower_bound_s"] <= doc["greedy"]["duration_s"] < doc["reload_from_storage_s"]
    assert set(doc["greedy"]["gb_by_link_kind"]) == {"nvlink_send"}


def test_transfer_plan_rejects_configs_that_do_not_fit(capsys):
    assert main(["transfer-plan", "--model", "llama-2-70b", "--from", "TP4x2", "--to", "TP1x8"]) == 2
    assert "cannot hold" in capsys.readouterr().err
    assert main(["transfer-plan", "--from", "TP4", "--to", "TP1x8"]) == 2
