"""Candidate replica configurations and their placement onto a cluster's GPUs.

A deployment is, to the planner, a count of replicas per configuration; this module lists the
configurations worth considering (TP and PP powers of two, a replica within one node, memory must fit)
and packs a count vector onto GPU ids. Tensor-parallel groups never span nodes. Replicas are placed
largest first, each into the node with the least free space that still holds it (best-fit decreasing),
which always succeeds when node sizes are multiples of the power-of-two replica sizes and the GPUs suffice:
``fits_cluster`` then checks only the GPU budget, and packs (in time linear in the replicas) otherwise.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Mapping, Sequence

from oserve.common.errors import InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Replica

POWERS_OF_TWO = (1, 2, 4, 8, 16)


def candidate_configs(cluster: ClusterSpec, cost: CostModel, allow_pp: bool = True) -> list[ReplicaConfig]:
    """Every configuration that fits the model in memory and fits in one node of its GPU type."""
    out = []
    for group in cluster.groups:
        for tp in POWERS_OF_TWO:
            for pp in POWERS_OF_TWO if allow_pp else (1,):
                cfg = ReplicaConfig(group.gpu.name, tp, pp)
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


def best_fit_decreasing(free: Mapping[int, Sequence[int]], node_type: Mapping[int, str],
                        counts: Mapping[ReplicaConfig, int]
                        ) -> list[tuple[tuple[int, ...], ReplicaConfig]] | None:
    """Place ``counts`` replicas on the free GPUs of each node, or None when some replica does not fit.

    ``free[node]`` lists the node's free GPU ids in the order they are handed out. Replicas go largest
    first (ties by config), each into the node of its GPU type with the fewest free GPUs that still holds
    it (ties by the lowest node id), taking that node's first free GPUs. Nodes are kept in buckets by
    free count, so a placement costs O(distinct free counts + log nodes), not a scan of every node.
    """
    # per GPU type: free count -> heap of node ids with that many free GPUs, and the sorted counts
    buckets: dict[str, dict[int, list[int]]] = {}
    for node in sorted(free):
        if free[node]:
            buckets.setdefault(node_type[node], {}).setdefault(len(free[node]), []).append(node)
    levels = {t: sorted(b) for t, b in buckets.items()}
    taken_so_far = dict.fromkeys(free, 0)
    wanted = sorted(((cfg, n) for cfg, n in counts.items() if n > 0),
                    key=lambda item: (-item[0].num_gpus, item[0]))
    out: list[tuple[tuple[int, ...], ReplicaConfig]] = []
    for cfg, n in wanted:
        size = cfg.num_gpus
        by_free = buckets.get(cfg.gpu_type, {})
        level = levels.get(cfg.gpu_type, [])
        for _ in range(n):
            at = bisect.bisect_left(level, size)
            if at == len(level):
                return None
            have = level[at]
            node = heapq.heappop(by_free[have])
            if not by_free[have]:
                del by_free[have]
                level.pop(at)
            start = taken_so_far[node]
            taken_so_far[node] = start + size
            out.append((tuple(free[node][start:start + size]), cfg))
            left = have - size
            if left > 0:
                if left not in by_free:
                    by_free[left] = []
                    bisect.insort(level, left)
                heapq.heappush(by_free[left], node)
    return out


def node_types(cluster: ClusterSpec) -> dict[int, str]:
    return {node: cluster.gpus[ids[0]].gpu_type for node, ids in cluster.nodes.items()}


def pack(counts: Mapping[ReplicaConfig, int], cluster: ClusterSpec) -> list[Replica] | None:
    """Assign GPU ids to the replicas (best-fit decreasing), or None when they do not fit the nodes."""
    placed = best_fit_decreasing(cluster.nodes, node_types(cluster), counts)
    if placed is None:
        return None
    return [Replica(i, gpus, cfg) for i, (gpus, cfg) in enumerate(placed)]


def always_packs(counts: Mapping[ReplicaConfig, int], cluster: ClusterSpec) -> bool:
    """True when best-fit decreasing cannot fail for these replica sizes once the GPU budget suffices.

    If, per GPU type, the replica sizes in use form a divisibility chain (each divides the next larger
    one, as powers of two do) and the largest divides every node's size, then while replicas of size s are
    placed every node's free count is a multiple of s: any node with free GPUs holds one more replica,
    so placement fails only when the type's GPUs run out.
    """
    sizes: dict[str, set[int]] = {}
    for cfg, n in counts.items():
        if n > 0:
            sizes.setdefault(cfg.gpu_type, set()).add(cfg.num_gpus)
    node_sizes: dict[str, set[int]] = {}
    for g in cluster.groups:
        node_sizes.setdefault(g.gpu.name, set()).add(g.gpus_per_node)
    for gpu_type, used in sizes.items():
        chain = sorted(used, reverse=True)
        if any(big % small for big, small in zip(chain, chain[1:])):
            return False
        if any(size % chain[0] for size in node_sizes.get(gpu_type, ())):
            return False
    return True


def fits_cluster(counts: Mapping[ReplicaConfig, int], cluster: ClusterSpec) -> bool:
    by_type = gpus_by_type(cluster)
    used: dict[str, int] = {}
    for cfg, n in counts.items():
        used[cfg.gpu_type] = used.get(cfg.gpu_type, 0) + n * cfg.num_gpus
    if any(used[t] > by_type.get(t, 0) for t in used):
        return False
    return always_packs(counts, cluster) or pack(counts, cluster) is not None
