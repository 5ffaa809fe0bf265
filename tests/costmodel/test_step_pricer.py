"""The step pricer (``costmodel.step_pricer``) gives the cost model's step times bit for bit: the floats
of 360 random steps on nine configurations (PP with a chunk budget, FP8/INT8/INT4 weights, an FP8 KV
cache, a CPU device's fitted step model) as the cost model computed them before it moved there
(``data/step_times_3ab2859.json``, written by the tree at 3ab2859), and the simulator's step timer, which
calls the pricer directly, prices a miss as two of the cost model's own steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.sim.step_timer import CTX_PROBE_TOKENS, CostModelStepTimer

REFERENCE = json.loads((Path(__file__).parent / "data" / "step_times_3ab2859.json").read_text())["rows"]


def _config(row: dict) -> tuple[str, ReplicaConfig]:
    model, gpu, tp, pp, budget, wf, kvf = row["config"]
    precision = "fp32" if gpu.startswith("vllm-cpu") else "bf16"  # the CPU device runs fp32
    return model, ReplicaConfig(gpu, tp, pp=pp, max_num_batched_tokens=budget, weight_format=wf,
                                kv_cache_dtype=kvf, precision=precision)


def test_step_times_are_the_reference_floats():
    costs: dict[str, CostModel] = {}
    for row in REFERENCE:
        model, cfg = _config(row)
        cost = costs.setdefault(model, CostModel(load_models().get(model)))  # memos warm across rows
        chunks = tuple(tuple(c) for c in row["chunks"])
        batch, ctxs = row["batch"], tuple(row["ctxs"])
        where = f"{row['config']} {row['chunks']} batch {batch}"
        assert [t.hex() for t in cost.step_times_s(cfg, chunks, batch, ctxs)] == row["step_times_s"], where
        assert cost.step_time_s(cfg, chunks, batch, ctxs[2]).hex() == row["step_time_s"], where
        assert cost.stage_time_s(cfg, chunks, batch, ctxs[2]).hex() == row["stage_time_s"], where
        assert cost.decode_step_s(cfg, batch, ctxs[1]).hex() == row["decode_step_s"], where


def test_a_cold_pricer_gives_the_warm_ones_floats():
    """Memoised operator times change nothing: each row on a fresh cost model."""
    for row in REFERENCE[::9]:
        model, cfg = _config(row)
        chunks = tuple(tuple(c) for c in row["chunks"])
        got = CostModel(load_models().get(model)).step_times_s(cfg, chunks, row["batch"], tuple(row["ctxs"]))
        assert [t.hex() for t in got] == row["step_times_s"]


@pytest.mark.parametrize("cfg", [ReplicaConfig("H100-80GB", 4), ReplicaConfig("H100-80GB", 2, pp=2,
                                                                               max_num_batched_tokens=512)])
def test_a_timer_miss_is_two_cost_model_steps(cfg):
    """The timer's representative chunks (equal ones, or with PP the largest and equal others) through
    the pricer: the secant through ``CostModel.step_time_s`` at the two probe contexts, exactly."""
    cost = CostModel(load_models().get("llama-30b"))
    timer = CostModelStepTimer(CostModel(cost.model), cfg)
    for tokens, n, sq, batch, largest in ((900.0, 2, 9e5, 16, 700.0), (512.0, 1, 3e5, 1, 0.0),
                                          (3000.0, 3, 4e6, 120, 2000.0), (1500.0, 1, 2.25e6, 0, 0.0)):
        sizes = [tokens / n] * n
        if largest:
            sizes = [largest] + [(tokens - largest) / (n - 1)] * (n - 1)
        p = max(0.0, (sq - sum(c * c for c in sizes)) / (2 * tokens))
        chunks = tuple((c, p) for c in sizes)
        if batch == 0:
            assert timer._mixed_line(tokens, n, sq, 0, largest) == (cost.step_time_s(cfg, chunks), 0.0)
            continue
        c1, c2 = (batch * x for x in CTX_PROBE_TOKENS)
        t1, t2 = (cost.step_time_s(cfg, chunks, batch, c) for c in (c1, c2))
        slope = (t2 - t1) / (c2 - c1)
        assert timer._mixed_line(tokens, n, sq, batch, largest) == (t1 - slope * c1, slope)
