"""The elastic loop (objective min-gpus): the fleet follows a rising and falling REAL-DRIFT ramp, uses fewer
GPU-hours than a static fleet sized for the peak, keeps the attainment target, and loses no request."""

import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.forecast.synthetic import load_any_trace
from oserve.sim.adaptive_experiment import AdaptiveSetup, compare
from oserve.sim.experiment import prepare_trace
from oserve.switching import IoProfile, SwitchParams


@pytest.fixture(scope="module")
def runs():
    cost = CostModel(load_models().get("llama-2-7b"))
    trace = load_any_trace("stitch:azure-conv/0-300*1~6,azure-conv/300-600*6~1")  # up, then down
    setup = AdaptiveSetup(parse_cluster("1x8xH100"), cost, prepare_trace(trace, cost, 2, 0),
                          switch=SwitchParams(horizon_s=300, min_gap_s=60), control_interval_s=30,
                          warmup_s=60, io=IoProfile.h100())
    return compare(setup, ("static-peak", "elastic"))


def test_the_fleet_grows_then_shrinks(runs):
    gpus = [sum(r.num_gpus_by_config.values()) for r in runs["elastic"]["timeline"]]
    peak = max(gpus)
    assert gpus[0] < peak and gpus[-1] < peak and runs["elastic"]["num_switches"] >= 3


def test_fewer_gpu_hours_than_the_peak_sized_fleet_at_the_target(runs):
    elastic, peak = runs["elastic"], runs["static-peak"]
    assert elastic["gpu_hours"] * 1.3 <= peak["gpu_hours"]
    for mode in (elastic, peak):
        assert all(a >= 0.9 for a in mode["attainment"]["per_type"])
        assert mode["result"].completed.all()
