"""From the current replicas to a target deployment: which replicas stay where they are, which stop and
which start on which GPUs. The simulator and the server's controller both execute these transitions.

As many current replicas as the target keeps of each configuration stay on their GPUs untouched. A
target replica that differs from a current one only in its engine settings (chunk budget, max
sequences) takes that replica's GPUs: it is *retuned*, restarted with its weights in place (no transfer).
The target's other replicas are packed into the remaining GPUs, largest first, each into the node with
the least free room that holds it. When the kept replicas fragment the nodes so that the rest cannot be
packed, the whole target is packed afresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from oserve.common.errors import InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.placement import best_fit_decreasing, node_types, pack
from oserve.planner.plan import Replica


@dataclass(frozen=True)
class Transition:
    current: tuple[Replica, ...]
    target: tuple[Replica, ...]  # replica ids 0..n-1 of the new deployment
    kept: tuple[tuple[int, int], ...]  # (current replica id, target replica id), same GPUs and config

    @property
    def stopped(self) -> tuple[Replica, ...]:
        kept_old = {a for a, _ in self.kept}
        return tuple(r for r in self.current if r.replica_id not in kept_old)

    @property
    def started(self) -> tuple[Replica, ...]:
        kept_new = {b for _, b in self.kept}
        return tuple(r for r in self.target if r.replica_id not in kept_new)

    @property
    def is_noop(self) -> bool:
        return not self.stopped and not self.started

    @property
    def retuned(self) -> tuple[tuple[Replica, Replica], ...]:
        """(stopped, started) pairs on the same GPUs with the same hardware split: engine settings only."""
        stopped = {(r.gpus, r.config.hardware): r for r in self.stopped}
        return tuple((stopped[(n.gpus, n.config.hardware)], n) for n in self.started
                     if (n.gpus, n.config.hardware) in stopped)

    @property
    def moved_gpus(self) -> int:
        return sum(r.config.num_gpus for r in self.started)


def counts_of(replicas: Iterable[Replica]) -> dict[ReplicaConfig, int]:
    out: dict[ReplicaConfig, int] = {}
    for r in replicas:
        out[r.config] = out.get(r.config, 0) + 1
    return out


def plan_transition(current: tuple[Replica, ...] | list[Replica], target_counts: Mapping[ReplicaConfig, int],
                    cluster: ClusterSpec) -> Transition:
    current = tuple(current)
    remaining = {c: n for c, n in target_counts.items() if n > 0}
    kept_old: list[Replica] = []
    for r in sorted(current, key=lambda r: r.replica_id):
        if remaining.get(r.config, 0) > 0:
            remaining[r.config] -= 1
            kept_old.append(r)
    retuned: list[tuple[tuple[int, ...], ReplicaConfig]] = []
    kept_ids = {r.replica_id for r in kept_old}
    for r in sorted(current, key=lambda r: r.replica_id):
        if r.replica_id in kept_ids:
            continue
        same_hw = next((c for c in sorted(remaining) if remaining[c] > 0 and c.hardware == r.config.hardware),
                       None)
        if same_hw is not None:  # engine settings only: restart in place, weights stay
            remaining[same_hw] -= 1
            retuned.append((r.gpus, same_hw))
    held = kept_old + [Replica(-1, gpus, c) for gpus, c in retuned]
    placed = _pack_around(held, remaining, cluster)
    if placed is not None:
        placed = retuned + placed
    if placed is None:  # fragmentation: start afresh
        fresh = pack(target_counts, cluster)
        if fresh is None:
            raise InfeasiblePlanError("the target deployment does not fit the cluster")
        kept = tuple((o.replica_id, n.replica_id) for o, n in _same_place(current, fresh))
        return Transition(current, tuple(fresh), kept)
    target = [Replica(i, r.gpus, r.config) for i, r in enumerate(kept_old)]
    target += [Replica(len(kept_old) + i, gpus, cfg) for i, (gpus, cfg) in enumerate(placed)]
    return Transition(current, tuple(target), tuple((r.replica_id, i) for i, r in enumerate(kept_old)))


def transition_to(current: tuple[Replica, ...] | list[Replica],
                  target: tuple[Replica, ...] | list[Replica]) -> Transition:
    """The transition to an already placed ``target`` (e.g. a plan given to the server): a current
    replica stays when the target has one of the same configuration on the same GPUs."""
    current, target = tuple(current), tuple(target)
    return Transition(current, target, tuple((o.replica_id, n.replica_id)
                                             for o, n in _same_place(current, target)))


def _same_place(current: Iterable[Replica], fresh: Iterable[Replica]) -> list[tuple[Replica, Replica]]:
    by_place = {(r.gpus, r.config): r for r in current}
    return [(by_place[(n.gpus, n.config)], n) for n in fresh if (n.gpus, n.config) in by_place]


def _pack_around(kept: list[Replica], remaining: Mapping[ReplicaConfig, int],
                 cluster: ClusterSpec) -> list[tuple[tuple[int, ...], ReplicaConfig]] | None:
    used = {g for r in kept for g in r.gpus}
    free = {node: [g for g in ids if g not in used] for node, ids in cluster.nodes.items()}
    return best_fit_decreasing(free, node_types(cluster), remaining)
