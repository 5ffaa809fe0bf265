"""Test helper: the planning inputs the goodput planner and verification tests share, Llama-2-70B on one
node of 8 H100s over the first 600 s of a shipped trace under an SLO preset."""

from __future__ import annotations

from oserve.costmodel.catalog import load_gpus, load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.planner.slo_planner import slo_workload
from oserve.sim.experiment import prepare_trace
from oserve.workload.slo import slo_from_flags


def goodput_setup(trace: str = "azure-conv", preset: str = "loose"):
    """(cost model, cluster, prepared trace, SLO, SLO workload)."""
    cost = CostModel(load_models().get("llama-2-70b"))
    cluster = parse_cluster("1x8xH100", load_gpus())
    prepared = prepare_trace(trace, cost, window_s=(0.0, 600.0))
    slo = slo_from_flags(preset, None, None, None)
    return cost, cluster, prepared, slo, slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
