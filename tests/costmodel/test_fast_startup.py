"""Start-up shortcuts give the reference results: libyaml parsing, the vectorised running median, the
memoised token-count terms of the cost model, and the CLI importing only the chosen command."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("cfg", [ReplicaConfig("H100-80GB", 4), ReplicaConfig("A100-80GB", 2, pp=2),
                                 ReplicaConfig("L40S", 1), ReplicaConfig("H200", 8, kv_cache_dtype="fp8")])
def test_memoised_operator_times_equal_fresh_ones_on_random_steps(cfg):
    """The attention, LM-head and all-reduce memo (keyed on what each reads) changes no step time: the
    same shapes twice, and one prefill at two decode contexts (what a step-timer miss asks)."""
    rng = np.random.default_rng(0)
    warm = CostModel(load_models().get("llama-2-70b"))
    cases = []
    for _ in range(12):
        chunks = tuple((float(rng.integers(1, 2000)), float(rng.integers(0, 3000)))
                       for _ in range(int(rng.integers(0, 4))))
        batch = int(rng.integers(0, 64))
        cases += [(chunks, batch, batch * 256.0), (chunks, batch, batch * 4096.0)]
    for args in cases + cases:
        fresh = CostModel(load_models().get("llama-2-70b"))
        assert warm.step_time_s(cfg, *args) == fresh.step_time_s(cfg, *args)


def test_plan_command_plans_without_scipy_optimize(tmp_path):
    """With highspy installed the planner's LPs skip scipy.optimize (0.4 s of start-up)."""
    pytest.importorskip("highspy")
    code = ("import sys; from oserve.cli.main import main; main(['plan', '--cluster', '1x8xH100', "
            "'--model', 'llama-2-70b', '--trace', 'azure-conv']); "
            "print('scipy.optimize' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OSERVE_CACHE_DIR": str(tmp_path)})
    assert out.stderr.strip().splitlines()[-1] == "False"


def test_plan_command_does_not_import_the_server_or_the_guard():
    code = ("import sys; from oserve.cli.main import build_parser; build_parser('plan'); "
            "print(sorted(m for m in sys.modules if m.startswith(('oserve.runtime', 'oserve.guard', "
            "'scipy.stats', 'fastapi'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("cfg", [ReplicaConfig("H100-80GB", 4), ReplicaConfig("H100-80GB", 2, pp=2),
                                 ReplicaConfig("H100-80GB", 2, pp=4, max_num_batched_tokens=512),
                                 ReplicaConfig("A100-80GB", 1, pp=2, max_num_batched_tokens=2048),
                                 ReplicaConfig("H200", 8, kv_cache_dtype="fp8")])
def test_a_step_at_several_contexts_is_each_single_context_step(cfg):
    """``step_times_s`` (one micro-batch split and one set of context-free terms for both of a step
    timer's contexts) gives exactly ``step_time_s`` at each context, on fresh and on warm memos; chunks
    above the budget are cut into pieces, decode-only and prefill-only steps included."""
    rng = np.random.default_rng(1)
    warm = CostModel(load_models().get("llama-2-70b"))
    for _ in range(40):
        chunks = tuple((float(rng.integers(1, 5000)), float(rng.integers(0, 3000)))
                       for _ in range(int(rng.integers(0, 5))))
        batch = int(rng.integers(0 if chunks else 1, 120))
        ctxs = (batch * 256.0, batch * 4096.0, batch * float(rng.integers(1, 9000)))
        fresh = CostModel(load_models().get("llama-2-70b"))
        both = fresh.step_times_s(cfg, chunks, batch, ctxs)
        assert both == warm.step_times_s(cfg, chunks, batch, ctxs)
        singles = [CostModel(load_models().get("llama-2-70b")).step_time_s(cfg, chunks, batch, c)
                   for c in ctxs]
        assert both == singles
        assert fresh.stage_times_s(cfg, chunks, batch, ctxs) == [
            warm.stage_time_s(cfg, chunks, batch, c) for c in ctxs]
