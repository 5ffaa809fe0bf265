"""The planner's fast paths give what the reference paths they replace give, on small cases.

- ``placement.pack`` (bucketed best-fit decreasing) against the scan that picked the best node by looking
  at every node for every replica (the implementation before it, kept here as the reference);
- ``fits_cluster``'s budget-only shortcut against packing;
- ``references.homogeneous`` on mixed clusters (one MILP, then the enumeration's tie-breaking) against
  ``homogeneous_by_enumeration`` (one LP per combination).
"""

from collections.abc import Mapping

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner import placement, references
from oserve.planner.api import make_plan
from oserve.planner.plan import Replica
from oserve.planner.problem import PlanningProblem
from oserve.workload.request_types import TypeStats


def _scan_pack(counts: Mapping[ReplicaConfig, int], cluster) -> list[Replica] | None:
    """Reference: best-fit decreasing by scanning every node for every replica."""
    free = {node: list(ids) for node, ids in cluster.nodes.items()}
    node_type = {node: cluster.gpus[ids[0]].gpu_type for node, ids in cluster.nodes.items()}
    wanted = sorted(((cfg, n) for cfg, n in counts.items() if n > 0),
                    key=lambda item: (-item[0].num_gpus, item[0]))
    replicas: list[Replica] = []
    for cfg, n in wanted:
        for _ in range(n):
            fitting = [node for node, ids in free.items()
                       if node_type[node] == cfg.gpu_type and len(ids) >= cfg.num_gpus]
            if not fitting:
                return None
            node = min(fitting, key=lambda nd: (len(free[nd]), nd))
            taken, free[node] = free[node][:cfg.num_gpus], free[node][cfg.num_gpus:]
            replicas.append(Replica(len(replicas), tuple(taken), cfg))
    return replicas


CLUSTERS = ["2x8xH100", "3x6xH100", "2x12xH100+1x8xA100-80GB", "1x3xH100+2x5xH100+1x4xL4",
            "4x8xH100+2x8xA100-80GB"]
SIZES = [(1, 1), (2, 1), (1, 2), (4, 1), (2, 2), (8, 1), (1, 4), (3, 1), (6, 1)]


def _random_counts(cluster, rng) -> dict[ReplicaConfig, int]:
    counts = {}
    for gpu_type in cluster.gpu_types:
        for tp, pp in SIZES:
            if rng.random() < 0.25:
                counts[ReplicaConfig(gpu_type, tp, pp)] = int(rng.integers(0, 4))
    return counts


@pytest.mark.parametrize("spec", CLUSTERS)
def test_bucketed_pack_places_exactly_like_the_scan(spec):
    cluster = parse_cluster(spec)
    rng = np.random.default_rng(len(spec))
    placed_some = 0
    for _ in range(300):
        counts = _random_counts(cluster, rng)
        expected = _scan_pack(counts, cluster)
        assert placement.pack(counts, cluster) == expected, counts
        placed_some += expected is not None and len(expected) > 0
    assert placed_some > 25  # the cases are not all trivially infeasible


@pytest.mark.parametrize("spec", CLUSTERS)
def test_budget_shortcut_agrees_with_packing(spec):
    cluster = parse_cluster(spec)
    rng = np.random.default_rng(7 + len(spec))
    budget = placement.gpus_by_type(cluster)
    shortcut_used = 0
    for _ in range(300):
        counts = _random_counts(cluster, rng)
        by_packing = _scan_pack(counts, cluster) is not None
        assert placement.fits_cluster(counts, cluster) == by_packing, counts
        used = {}
        for cfg, n in counts.items():
            used[cfg.gpu_type] = used.get(cfg.gpu_type, 0) + n * cfg.num_gpus
        within = all(used[t] <= budget[t] for t in used)
        if within and placement.always_packs(counts, cluster):
            assert by_packing, counts  # the shortcut's claim: within budget means it packs
            shortcut_used += 1
    if spec in ("2x8xH100", "4x8xH100+2x8xA100-80GB"):
        assert shortcut_used > 40


def test_shortcut_declines_when_sizes_do_not_divide_the_nodes():
    h = "H100-80GB"
    assert placement.always_packs({ReplicaConfig(h, 4): 3, ReplicaConfig(h, 2): 1}, parse_cluster("2x8xH100"))
    assert not placement.always_packs({ReplicaConfig(h, 4): 3}, parse_cluster("3x6xH100"))
    assert not placement.always_packs({ReplicaConfig(h, 3): 1, ReplicaConfig(h, 2): 1},
                                      parse_cluster("2x12xH100"))
    # within the GPU budget (16 of 18) but three TP4 need three nodes with 4 free of 6: only when packed
    assert not placement.fits_cluster({ReplicaConfig(h, 4): 4}, parse_cluster("3x6xH100"))


def _stats():
    shapes, rates = [(150, 150), (1000, 300), (3000, 80), (600, 900)], (2.0, 1.0, 0.5, 0.7)
    return [TypeStats(f"T{i}", a, b, a, b, 100, r) for i, ((a, b), r) in enumerate(zip(shapes, rates))]


@pytest.mark.parametrize("model, spec", [
    ("llama-2-70b", "1x8xH100+1x8xA100-80GB"),
    ("llama-2-13b", "2x8xH100+1x8xL40S"),
    ("opt-30b", "1x8xH100+1x4xA100-80GB+1x8xH200"),
    ("llama-2-70b", "3x8xH100+2x8xL40S+1x4xA100-80GB"),  # the L40S replicas carry nothing: a tie
])
def test_homogeneous_by_milp_equals_enumeration(model, spec):
    problem = PlanningProblem(parse_cluster(spec), CostModel(load_models().get(model)), _stats())
    assert references.homogeneous(problem) == references.homogeneous_by_enumeration(problem)


def test_mixed_cluster_with_a_gpu_type_that_hosts_no_replica_still_plans():
    # regression: the enumeration took the product over every GPU type's options, and a type with none
    # (Llama-2-70B does not fit in a 4-GPU L4 node) made it empty: max() of nothing, a ValueError
    cluster = parse_cluster("1x8xH100+2x4xL4")
    model = load_models().get("llama-2-70b")
    problem = PlanningProblem(cluster, CostModel(model), _stats())
    assert references.homogeneous_by_enumeration(problem) == references.homogeneous(problem)
    for planner in ("homogeneous", "oserve"):
        plan = make_plan(cluster, model, _stats(), planner)
        assert {r.config.gpu_type for r in plan.replicas} == {"H100-80GB"}
