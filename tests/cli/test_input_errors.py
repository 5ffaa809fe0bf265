"""Every user mistake the CLI can meet gives one line on stderr naming the flag, file, line or field, and
exit code 2; never a traceback (issue 9, item 7). Run in-process through ``main`` as a user's shell would."""

from __future__ import annotations

import json
import socket

import pytest

from oserve.cli.main import main
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.static_plan import static_plan

TYPES = ["T0", "T1", "T2", "T3"]  # `--types 4`, the default


def run(capsys, *argv: str) -> str:
    """Run ``oserve ARGV``, expect exit code 2 and return the one-line error."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def run_parse_error(capsys, *argv: str) -> str:
    """argparse-level mistakes exit through SystemExit(2)."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def plan_doc(num_replicas: int = 2) -> dict:
    return static_plan("oserve-fake", [ReplicaConfig("cpu")] * num_replicas, TYPES).to_dict()


# ---- oserve serve --plan FILE --------------------------------------------------------------------------

def _serve_plan(capsys, path) -> str:
    return run(capsys, "serve", "--engine", "fake", "--port", "0", "--plan", str(path))


def test_serve_plan_malformed_json_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text('{\n  "model": "m",\n  "replicas": [,]\n}')
    line = _serve_plan(capsys, path)
    assert str(path) in line and "line 3" in line and "invalid JSON" in line


def test_serve_plan_missing_key_names_the_field(tmp_path, capsys):
    doc = plan_doc()
    del doc["dispatch"]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    line = _serve_plan(capsys, tmp_path / "p.json")
    assert "p.json" in line and "'dispatch'" in line and "required" in line.lower()


def test_serve_plan_unknown_key_is_rejected(tmp_path, capsys):
    doc = plan_doc()
    doc["replicas"][0]["tensor_parallel"] = 2
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert "replicas.0.tensor_parallel" in _serve_plan(capsys, tmp_path / "p.json")


def test_serve_plan_json_array(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps([plan_doc()]))
    assert "expected a JSON object" in _serve_plan(capsys, tmp_path / "p.json")


def test_serve_plan_missing_file_and_directory(tmp_path, capsys):
    assert "does not exist" in _serve_plan(capsys, tmp_path / "nope.json")
    assert "is a directory" in _serve_plan(capsys, tmp_path)


def test_serve_plan_without_replicas(tmp_path, capsys):
    doc = plan_doc()
    doc.update(replicas=[], capacity_rps=[], utilisation=[], dispatch=[[] for _ in TYPES])
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert "'replicas'" in _serve_plan(capsys, tmp_path / "p.json")


def test_serve_plan_with_a_dispatch_of_the_wrong_size(tmp_path, capsys):
    doc = plan_doc()
    doc["dispatch"] = doc["dispatch"][:-1]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    line = _serve_plan(capsys, tmp_path / "p.json")
    assert "'dispatch'" in line and "4 rows" in line


def test_serve_plan_typed_for_other_types_than_the_trace(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    (tmp_path / "p.json").write_text(json.dumps(plan_doc()))
    line = run(capsys, "serve", "--engine", "fake", "--port", "0", "--types", "3", "--plan",
               str(tmp_path / "p.json"))
    assert "4 request types" in line and "--types" in line


# ---- oserve serve flags --------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--port", "99999"), ("--context-tokens", "0"),
                                         ("--max-inflight", "0"), ("--replicas", "0"),
                                         ("--window-s", "nan"), ("--dispatch-policy", "least-outstandin"),
                                         ("--planner", "osrve")])
def test_serve_flag_out_of_range(capsys, flag, value):
    line = run_parse_error(capsys, "serve", "--engine", "fake", flag, value)
    assert flag in line


def test_serve_port_in_use(capsys):
    pytest.importorskip("uvicorn")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        line = run(capsys, "serve", "--engine", "fake", "--port", str(port))
    finally:
        taken.close()
    assert f"--port {port}" in line and "in use" in line


def test_serve_bad_host(capsys):
    pytest.importorskip("uvicorn")
    line = run(capsys, "serve", "--engine", "fake", "--port", "0", "--host", "256.1.1.1")
    assert line.startswith("oserve: error: --host 256.1.1.1")


def test_serve_cluster_needs_model(capsys):
    assert "--cluster needs --model" in run(capsys, "serve", "--engine", "fake", "--cluster", "1x8xH100")


# ---- traces ---------------------------------------------------------------------------------------------

def test_trace_with_a_huge_token_count(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,10,5\n1,1e30,5\n")
    line = run(capsys, "plan", "--trace", str(path))
    assert "t.csv, line 3, field 'input_tokens'" in line and "limit" in line


def test_binary_file_as_trace(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(b"arrival_s,input_tokens\n\x00\xff\xfe\x89PNG\r\n")
    line = run(capsys, "plan", "--trace", str(path))
    assert "t.csv" in line and ("binary" in line or "not a CSV" in line)


def test_directory_as_trace(tmp_path, capsys):
    assert "is a directory" in run(capsys, "plan", "--trace", str(tmp_path))


def test_trace_whose_timestamps_are_all_equal_is_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "5,100,10\n" * 20)
    line = run(capsys, "plan", "--trace", str(path))
    assert "t.csv" in line and "same instant" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_rate_scale_must_be_positive_and_finite(capsys, value):
    assert "--rate-scale" in run_parse_error(capsys, "plan", "--rate-scale", value)
    assert "--rate-scale" in run(capsys, "simulate", "--rate-scale", f"1,{value}")


# ---- clusters and catalogs ---------------------------------------------------------------------------

def test_cluster_yaml_with_a_negative_count(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("nodes:\n  - {count: -1, gpus_per_node: 8, gpu: H100}\n")
    line = run(capsys, "plan", "--cluster", str(path))
    assert "c.yaml, field 'nodes[0].count'" in line and ">= 1" in line


def test_absurd_cluster_size_is_refused_with_the_limit():
    from oserve.common.errors import ConfigError
    from oserve.costmodel.catalog import MAX_CLUSTER_GPUS, parse_cluster

    with pytest.raises(ConfigError, match=f"{MAX_CLUSTER_GPUS:,}"):
        parse_cluster("1000000x8xH100")
    assert parse_cluster(f"{MAX_CLUSTER_GPUS // 8}x8xH100").num_gpus == MAX_CLUSTER_GPUS


def test_absurd_cluster_size_from_the_cli(capsys):
    from oserve.costmodel.catalog import MAX_CLUSTER_GPUS

    assert f"limit of {MAX_CLUSTER_GPUS:,}" in run(capsys, "plan", "--cluster", "1000000x8xH100")


# ---- renamed flags: an old spelling is refused, never taken as a prefix of the new one ------------------

@pytest.mark.parametrize("argv", [("simulate", "--window", "0:60"), ("simulate", "--drain", "5"),
                                  ("simulate-adaptive", "--drain", "5"),
                                  ("forecast", "eval", "--window", "10s"),
                                  ("simulate", "--dispatch", "spillover")])
def test_old_flag_spellings_are_not_abbreviations(capsys, argv):
    assert "unrecognized arguments" in run_parse_error(capsys, *argv)


def test_time_range_must_be_ordered(capsys):
    assert "--time-range" in run(capsys, "simulate", "--time-range", "60:10")


def test_trace_scaled_refuses_nan():
    from oserve.common.errors import ConfigError
    from oserve.workload import load_trace

    with pytest.raises(ConfigError, match="positive finite"):
        load_trace("azure-code").scaled(float("nan"))


def test_slo_spill_dispatch_needs_an_slo(capsys):
    line = run(capsys, "simulate", "--dispatch-policy", "slo-spill", "--planner", "default")
    assert "slo-spill" in line and "--slo" in line


def test_serve_slo_spill_dispatch_needs_an_slo_and_a_cost_model(capsys):
    line = run(capsys, "serve", "--engine", "fake", "--port", "0", "--dispatch-policy", "slo-spill")
    assert "slo-spill" in line and "--slo" in line
    line = run(capsys, "serve", "--engine", "fake", "--port", "0", "--dispatch-policy", "slo-spill",
               "--slo", "loose")
    assert "slo-spill" in line and "--cluster" in line


def test_serve_replan_refuses_a_disaggregated_plan(tmp_path, capsys):
    from tests.planner.test_plan_roles import disagg_plan

    path = tmp_path / "groups.json"
    path.write_text(json.dumps(disagg_plan().to_dict()))
    line = run(capsys, "serve", "--engine", "fake", "--port", "0", "--plan", str(path), "--replan")
    assert "--replan with the disaggregated plan" in line and "colocated plans only" in line
