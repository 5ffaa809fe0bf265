"""Candidate replica configurations and their placement onto a cluster's GPUs.

A deployment is, to the planner, a count of replicas per configuration; this module lists the
configurations worth considering (TP and PP powers of two, a replica within one node, memory must fit)
and packs a count vector onto GPU ids. Tensor-parallel groups never span nodes. Replicas are placed
largest first, each into the node with the least free space that still holds it (best-fit decreasing),
which always succeeds when node sizes are multiples of the power-of-two replica sizes and the GPUs suffice.
"""

from __future__ import annotations

from collections.abc import Mapping

from oserve.common.errors import InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica

POWERS_OF_TWO = (1, 2, 4, 8, 16)


def candidate_configs(cluster: ClusterSpec, cost: CostModel, allow_pp: bool = True,
                      weight_formats: tuple[str, ...] = ("bf16",),
                      kv_formats: tuple[str, ...] = ("bf16",)) -> list[ReplicaConfig]:
    """Every configuration (with each allowed number format) that fits the model in memory and fits in
    one node of its GPU type."""
    out = []
    for group in cluster.groups:
        for tp in POWERS_OF_TWO:
            for pp in POWERS_OF_TWO if allow_pp else (1,):
                for w in weight_formats:
                    for kv in kv_formats:
                        cfg = ReplicaConfig(group.gpu.name, tp, pp, weight_format=w, kv_cache_dtype=kv)
                        if tp * pp <= group.gpus_per_node and cost.fits(cfg) and cfg not in out:
                            out.append(cfg)
    if not out:
        raise InfeasiblePlanError(
            f"model '{cost.model.name}' ({cost.model.weight_bytes / 1e9:.0f} GB of weights) fits no "
            f"replica within one node of cluster {cluster.describe()} with room for "
            f"{cost.params.min_kv_tokens} tokens of KV cache")
    return out


def gpus_by_type(cluster: ClusterSpec) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in cluster.groups:
        out[g.gpu.name] = out.get(g.gpu.name, 0) + g.num_nodes * g.gpus_per_node
    return out


def pack(counts: Mapping[ReplicaConfig, int], cluster: ClusterSpec) -> list[Replica] | None:
    """Assign GPU ids to the replicas, or None when they do not fit the cluster's nodes."""
    free: dict[int, list[int]] = {node: list(ids) for node, ids in cluster.nodes.items()}
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


def fits_cluster(counts: Mapping[ReplicaConfig, int], cluster: ClusterSpec) -> bool:
    by_type = gpus_by_type(cluster)
    used: dict[str, int] = {}
    for cfg, n in counts.items():
        used[cfg.gpu_type] = used.get(cfg.gpu_type, 0) + n * cfg.num_gpus
    if any(used[t] > by_type.get(t, 0) for t in used):
        return False
    return pack(counts, cluster) is not None
