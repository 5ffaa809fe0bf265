"""Start-up shortcuts give the reference results: libyaml parsing, the vectorised running median, the
memoised token-count terms of the cost model, and the CLI importing only the chosen command."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import yaml

from oserve.common.yaml_io import safe_load
from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.network import _running_median
from oserve.costmodel.replica_config import ReplicaConfig


@pytest.mark.parametrize("name", ["calibration.yaml", "gpus.yaml", "models.yaml"])
def test_bundled_files_parse_to_the_same_documents(name):
    text = resources.files("oserve.data").joinpath(name).read_text()
    assert safe_load(text) == yaml.safe_load(text)


def test_a_syntax_error_is_the_pure_python_parsers():
    bad = "models:\n  - name: x\n   bad: [1, 2\n"
    with pytest.raises(yaml.YAMLError) as ours:
        safe_load(bad)
    with pytest.raises(yaml.YAMLError) as ref:
        yaml.safe_load(bad)
    assert str(ours.value) == str(ref.value)


def test_running_median_equals_the_window_loop():
    values = np.random.default_rng(0).random(57) * 10
    padded = np.pad(values, 4, mode="edge")
    loop = np.array([np.median(padded[i:i + 9]) for i in range(len(values))])
    assert np.array_equal(_running_median(values), loop)


def test_memoised_terms_give_the_same_step_times():
    cfg = ReplicaConfig("H100-80GB", 4)
    cases = [((), 64, 64 * 900.0), (((512, 0),), 0, 0.0), (((300, 40), (12, 900)), 17, 17 * 2000.0)]
    warm = CostModel(load_models().get("llama-2-70b"))
    for args in cases + cases:  # the second round is served from the memo
        fresh = CostModel(load_models().get("llama-2-70b"))
        assert warm.step_time_s(cfg, *args) == fresh.step_time_s(cfg, *args)


def test_plan_command_does_not_import_the_server_or_the_guard():
    code = ("import sys; from oserve.cli.main import build_parser; build_parser('plan'); "
            "print(sorted(m for m in sys.modules if m.startswith(('oserve.runtime', 'oserve.guard', "
            "'scipy.stats', 'fastapi'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
