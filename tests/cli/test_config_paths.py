"""Flags become typed configs; configs validate their input; the CLI's failure paths are honest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from oserve.cli.main import build_parser, main
from oserve.common.errors import ConfigError, InputFormatError
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Plan
from oserve.runtime.static_plan import static_plan

CUSTOM_MODEL = """models:
  - name: my-7b
    num_layers: 32
    hidden_size: 4096
    num_heads: 32
    num_kv_heads: 32
    ffn_size: 11008
    gated_mlp: true
    vocab_size: 32000
"""


def test_serve_resolves_the_cost_model_as_plan_does(tmp_path):
    from oserve.cli.common_args import cost_model_config
    from oserve.cli.serve_cmd import serve_config

    models = tmp_path / "models.yaml"
    models.write_text(CUSTOM_MODEL)
    common = ["--cluster", "1x8xH100", "--model", "my-7b", "--models", str(models), "--plan-tpot", "0.2"]
    serve = serve_config(build_parser().parse_args(["serve", "--engine", "fake", *common]))
    plan = cost_model_config(build_parser().parse_args(["plan", *common]))
    assert serve.cost_model == plan
    _cluster, model, cost = serve.cost_model.resolve()
    assert model.name == "my-7b" and cost.tpot_slo_s == 0.2


def test_serve_with_a_custom_catalog_model_builds_its_runtime(tmp_path):
    """Before: serve --cluster read only the shipped catalog and a bare CostModel (no --models file)."""
    from oserve.cli.serve_cmd import serve_config
    from oserve.runtime.serve_setup import build_runtime

    models = tmp_path / "models.yaml"
    models.write_text(CUSTOM_MODEL)
    args = build_parser().parse_args(["serve", "--engine", "fake", "--cluster", "1x8xH100",
                                      "--model", "my-7b", "--models", str(models)])
    runtime = build_runtime(serve_config(args))
    assert runtime.model_name == "my-7b" and runtime.router.table.plan.num_gpus <= 8


def test_serve_config_defaults_come_from_the_config_types():
    from oserve.cli.serve_cmd import serve_config
    from oserve.runtime.serve_setup import ServeConfig

    config = serve_config(build_parser().parse_args(["serve"]))
    assert config == ServeConfig()


def test_replan_cooldown_reaches_the_cost_aware_policy_only_when_given():
    """Before: --replan-cooldown-s set the reactive gate only; the cost-aware policy kept 300 s."""
    from oserve.cli.serve_cmd import serve_config
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.runtime.serve_setup import control_policy
    from oserve.switching.policy import SwitchParams
    from oserve.workload.request_types import TypeStats

    def replan(*flags):
        return serve_config(build_parser().parse_args(["serve", *flags])).runtime.replan

    cluster, cost = parse_cluster("1x8xH100"), CostModel(load_models().get("llama-2-13b"))
    types = (TypeStats("short", 300, 100, 600, 200, 100, 1.0),)
    given = control_policy(cluster, cost, types, "cost-aware", replan("--replan-cooldown-s", "30"))
    assert given.params.min_gap_s == 30.0
    unset = control_policy(cluster, cost, types, "cost-aware", replan())
    assert unset.params.min_gap_s == SwitchParams().min_gap_s


def test_runtime_config_rejects_a_dispatch_typo_and_unknown_keys():
    from oserve.common.validation import build
    from oserve.runtime.serving import RuntimeConfig

    with pytest.raises(ConfigError, match="dispatch_policy: must be one of"):
        build(RuntimeConfig, {"dispatch_policy": "least-outstandin"}, "config")
    with pytest.raises(ConfigError, match=r"replan\.cooldwn_s: unknown key"):
        build(RuntimeConfig, {"replan": {"cooldwn_s": 1.0}}, "config")
    with pytest.raises(ValueError):
        RuntimeConfig(max_inflight_per_replica=0)


def test_search_params_and_replan_config_validate():
    from oserve.planner.search import SearchParams
    from oserve.switching.replan_gate import ReplanConfig

    with pytest.raises(ValueError):
        SearchParams(min_gain_over_homogeneous=-0.1)
    with pytest.raises(ValueError):
        SearchParams(patience_steps=3)
    with pytest.raises(ValueError):
        ReplanConfig(volume_ratio=0.5)


def test_engine_options_are_validated_at_start_up():
    from oserve.runtime.engine_spec import EngineSpec

    with pytest.raises(ConfigError, match="engine 'fake' options: decode_s_per_tokn: unknown key"):
        EngineSpec("fake", {"decode_s_per_tokn": 0.1})
    with pytest.raises(ConfigError, match="context_tokens"):
        EngineSpec("embedded", {"context_tokens": 0})
    with pytest.raises(ConfigError, match="url"):
        EngineSpec("remote", {"model": "m"})
    assert EngineSpec("fake", {"decode_s_per_token": 0.1}).options == {"decode_s_per_token": 0.1}


def test_plan_round_trips_and_rejects_inconsistent_documents():
    plan = static_plan("m", [ReplicaConfig("cpu")] * 2, ["a", "b"], type_rates_rps=[1.0, 2.0])
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    bad = plan.to_dict()
    bad["replicas"][1]["gpus"] = [0, 1]
    with pytest.raises(InputFormatError, match=r"replicas\[1\]\.gpus"):
        Plan.from_dict(bad, "p.json")
    bad = plan.to_dict()
    bad["dispatch"][0] = [0.9, 0.9]
    with pytest.raises(InputFormatError, match=r"dispatch\[0\]"):
        Plan.from_dict(bad, "p.json")
    bad = plan.to_dict()
    bad["demand_scale"] = "lots"
    with pytest.raises(InputFormatError, match="p.json, field 'demand_scale'"):
        Plan.from_dict(bad, "p.json")


def test_costmodel_validate_uses_each_rows_gpu_column(profiles_dir, tmp_path, capsys):
    """The same measured rows relabelled as an A100 are scored on the A100 (and so fit badly): before,
    every row was scored as an H100 whatever its gpu column said."""
    h100 = profiles_dir / "h100_operator_profile.csv"
    relabelled = tmp_path / "a100.csv"
    relabelled.write_text(h100.read_text().replace("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"))
    assert main(["costmodel", "validate", "--profile", str(h100), "--json"]) == 0
    on_h100 = json.loads(capsys.readouterr().out)
    assert main(["costmodel", "validate", "--profile", str(relabelled), "--json"]) == 0
    on_a100 = json.loads(capsys.readouterr().out)
    assert on_h100["gpus"] == {"H100-80GB": on_h100["rows"]}
    assert on_a100["gpus"] == {"A100-80GB": on_a100["rows"]}
    assert on_a100["median_rel_err"] > 3 * on_h100["median_rel_err"]


def test_profile_gpu_names_map_to_the_catalog():
    from oserve.costmodel.calibration import profile_gpu
    from oserve.costmodel.catalog import load_gpus

    gpus = load_gpus()
    assert profile_gpu("NVIDIA H100 80GB HBM3", gpus).name == "H100-80GB"
    assert profile_gpu("NVIDIA A100-SXM4-40GB", gpus).name == "A100-40GB"
    assert profile_gpu("NVIDIA L40S", gpus).name == "L40S"
    with pytest.raises(ConfigError, match="--gpu"):
        profile_gpu("AMD MI300X", gpus)


def test_plan_json_into_a_closed_pipe_exits_quietly():
    proc = subprocess.run(f"'{sys.executable}' -m oserve.cli.main plan --cluster 1x8xH100 --model llama-2-7b "
                          "--planner homogeneous --json | head -c 10", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout == '{\n  "model"'[:10] and proc.stderr == "", proc.stderr


def test_serve_config_validates_names():
    from oserve.common.validation import build
    from oserve.runtime.serve_setup import ServeConfig

    with pytest.raises(ConfigError, match="planner: must be one of"):
        build(ServeConfig, {"planner": "osrve"})
    with pytest.raises(ConfigError, match="engine: must be one of"):
        build(ServeConfig, {"engine": "tpu"})
    with pytest.raises(ConfigError, match="runtime.max_inflight_per_replica"):
        build(ServeConfig, {"runtime": {"max_inflight_per_replica": 0}})
