"""Disaggregated candidates for the goodput planner: prefill/decode groups, alone or beside colocated
replicas, scored by the group latency model (``costmodel.group_latency``).

The flow of a type is type -> prefill capacity -> decode capacity, two stages in series: a group meets a
type's SLO when its prefill pool meets the TTFT bound (less the KV hand-off and the first decode step)
and its decode pool the TPOT bound. The search:

1. **Pairs.** The prefill side from every tuned hardware split; the decode side from the best few
   tuned ones (the best two, and the best two that fit twice in a node, so that a node can hold a
   group) and the highest-TP split without PP (the fastest decode step).
2. **Roles and engines.** For each pair and layout the GPUs move between the roles: ``x`` prefill and
   ``y`` decode replicas per node (one group per node, the hand-off on NVLink), whole nodes of prefill
   and of decode (one group, the hand-off over the network), or pooled (one group, its decode replicas
   on part of the last node(s), prefill on the rest). Every split is scored at every
   prefill chunk budget of ``PREFILL_BUDGETS`` (a large budget packs more prompts per step, and each
   prompt in it waits for the whole step: the budget trades throughput for TTFT); for the best split of
   each layout family of the pair, the decode side's ``max_num_seqs`` over ``DECODE_MAX_SEQS``. The
   best per pair and family is kept.
3. **Split types between colocated replicas and groups.** Beside ``m`` replicas of the best colocated
   configuration per node (or on whole nodes of it), the best pair's groups serve the types with the
   longest prompts (the ``j`` longest, for every ``j``), the colocated replicas the rest: long prompts
   are what stall colocated decodes; and every type split between both in proportion to their GPUs.

Each candidate's dispatch is even within its part (types to the prefill replicas of every group, or to
the colocated replicas). ``dynamo_split`` is the reference Dynamo-style deployment: one configuration at
vLLM's default engine settings on both sides, the best homogeneous xPyD split of the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol, TypeVar

import numpy as np

from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.group_latency import GroupLatencyModel
from oserve.costmodel.kv_transfer import KvHandoff, KvLink
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.replica_config import ENGINE_DEFAULT, ReplicaConfig
from oserve.costmodel.slo_capacity import SloWorkload, max_good_scale, meets_target
from oserve.planner.plan import COLOCATED, DECODE, PREFILL, Replica

Slot = tuple[ReplicaConfig, str, "int | None"]  # a replica to place: configuration, role, group
NUM_PAIR_CONFIGS = 2  # tuned hardware splits each side of a pair is drawn from
PREFILL_BUDGETS = (1024, 2048, 4096, 8192)  # chunk budgets searched for the prefill side
DECODE_MAX_SEQS = (ENGINE_DEFAULT, 128, 512)  # max_num_seqs searched for the decode side


class DisaggScorer:
    """Predicted attainment and goodput scale of fleets with groups; models are shared per config."""

    def __init__(self, cluster: ClusterSpec, workload: SloWorkload,
                 model_of: Callable[[ReplicaConfig], ReplicaLatencyModel]) -> None:
        self.cluster, self.workload, self.model_of = cluster, workload, model_of
        self._groups: dict[tuple[ReplicaConfig, ReplicaConfig, int, int, KvLink], GroupLatencyModel] = {}

    def group_model(self, prefill: list[Replica], decode: list[Replica]) -> GroupLatencyModel:
        p, d = prefill[0], decode[0]
        link = KvLink.between(self.cluster, p.gpus, d.gpus)
        key = (p.config, d.config, len(prefill), len(decode), link)
        gm = self._groups.get(key)
        if gm is None:
            pm, dm = self.model_of(p.config), self.model_of(d.config)
            gm = GroupLatencyModel(pm, dm, len(prefill), len(decode),
                                   KvHandoff(pm.cost.model, p.config, d.config, link))
            self._groups[key] = gm
        return gm

    def attainment(self, replicas: tuple[Replica, ...], fractions: np.ndarray, scale: float) -> np.ndarray:
        w = self.workload
        rates = np.asarray(w.rates_rps) * scale
        att = np.zeros(w.num_types)
        total = max(float(rates.sum()), 1e-12)
        groups: dict[int, tuple[list[Replica], list[Replica]]] = {}
        for r in replicas:
            if r.role == COLOCATED:
                col = fractions[:, r.replica_id]
                if (col > 0).any():
                    pred = self.model_of(r.config).predict(list(w.samples), list(rates * col), list(w.slos),
                                                           w.burstiness, scale, None,
                                                           float((rates * col).sum()) / total)
                    att += col * np.array([p.attainment for p in pred.types])
            else:
                groups.setdefault(r.group or 0, ([], []))[0 if r.role == PREFILL else 1].append(r)
        for prefill, decode in groups.values():
            col = fractions[:, [r.replica_id for r in prefill]].sum(axis=1)
            if (col > 0).any():
                gm = self.group_model(prefill, decode)
                att += col * gm.attainment(list(w.samples), rates * col, list(w.slos), w.burstiness, scale,
                                           float((rates * col).sum()) / total)
        return att

    def predicted_scale(self, replicas: tuple[Replica, ...], fractions: np.ndarray, start: float) -> float:
        return max_good_scale(lambda s: meets_target(self.attainment(replicas, fractions, s), self.workload),
                              start, rel_tol=0.05)


def _place(cluster: ClusterSpec, per_node: list[list[Slot]]) -> tuple[Replica, ...] | None:
    """Replicas of (config, role, group) laid out node by node (``per_node[i]`` on the i-th node of the
    cluster, GPUs taken in order); None when a node's share does not fit it or its GPU type."""
    out: list[Replica] = []
    for gpus, wanted in zip(cluster.nodes.values(), per_node):
        free = list(gpus)
        for cfg, role, group in wanted:
            if cfg.num_gpus > len(free) or cluster.gpus[free[0]].gpu_type != cfg.gpu_type:
                return None
            out.append(Replica(len(out), tuple(free[:cfg.num_gpus]), cfg, role, group))
            free = free[cfg.num_gpus:]
    return tuple(out)


def even_fractions(replicas: tuple[Replica, ...], num_types: int, group_types: set[int]) -> np.ndarray:
    """Types in ``group_types`` spread over every prefill replica, the others over the colocated ones."""
    fr = np.zeros((num_types, len(replicas)))
    prefill = [r.replica_id for r in replicas if r.role == PREFILL]
    colocated = [r.replica_id for r in replicas if r.role == COLOCATED]
    for t in range(num_types):
        cols = prefill if t in group_types or not colocated else colocated
        fr[t, cols] = 1.0 / len(cols)
    return fr


def proportional_fractions(replicas: tuple[Replica, ...], num_types: int) -> np.ndarray:
    """Every type split between the colocated replicas and the groups in proportion to their GPUs: a
    colocated replica weighs its own GPUs, a prefill replica its group's GPUs over the group's prefill
    replicas (the decode replicas get no share)."""
    group_gpus: dict[int, int] = {}
    group_prefill: dict[int, int] = {}
    for r in replicas:
        if r.group is not None:
            group_gpus[r.group] = group_gpus.get(r.group, 0) + r.config.num_gpus
            group_prefill[r.group] = group_prefill.get(r.group, 0) + (r.role == PREFILL)
    w = np.zeros(len(replicas))
    for i, r in enumerate(replicas):
        if r.role == COLOCATED:
            w[i] = r.config.num_gpus
        elif r.role == PREFILL and r.group is not None:
            w[i] = group_gpus[r.group] / group_prefill[r.group]
    return np.tile(w / w.sum(), (num_types, 1))


def layouts(cluster: ClusterSpec, prefill: ReplicaConfig, decode: ReplicaConfig,
            colocated: ReplicaConfig | None = None) -> Iterator[tuple[str, tuple[Replica, ...]]]:
    """(layout name, replicas) for every split of the GPUs between the roles (see the module doc); with
    ``colocated``, also m colocated replicas per node beside the group."""
    nodes = list(cluster.nodes.values())
    if not nodes:
        return
    n = len(nodes[0])
    same_size = all(len(g) == n for g in nodes)
    ms = [0]
    if colocated is not None:
        ms = list(range(1, n // colocated.num_gpus + 1))
    for m in ms:
        left = n - m * (colocated.num_gpus if colocated is not None else 0)
        for x in range(1, left // prefill.num_gpus + 1):
            y = (left - x * prefill.num_gpus) // decode.num_gpus
            if y < 1 or not same_size:
                continue
            share: list[Slot] = [(colocated, COLOCATED, None)] * m if colocated is not None else []
            per_node = [share + _group(prefill, decode, x, y, i) for i in range(len(nodes))]
            placed = _place(cluster, per_node)
            if placed is not None:
                yield f"per-node m{m} {x}P{y}D", placed
    if colocated is not None and len(nodes) > 1 and same_size:  # whole nodes colocated, groups on the rest
        for a in range(1, len(nodes)):
            for x in range(1, n // prefill.num_gpus + 1):
                y = (n - x * prefill.num_gpus) // decode.num_gpus
                if y < 1:
                    continue
                coloc: list[Slot] = [(colocated, COLOCATED, None)] * (n // colocated.num_gpus)
                per_node = [coloc] * a + [_group(prefill, decode, x, y, i) for i in range(len(nodes) - a)]
                placed = _place(cluster, per_node)
                if placed is not None:
                    yield f"{a} colocated nodes + per-node {x}P{y}D", placed
    if colocated is None and len(nodes) > 1 and same_size:
        yield from _pooled_layouts(cluster, prefill, decode)
        for a in range(1, len(nodes)):
            pre: list[Slot] = [(prefill, PREFILL, 0)] * (n // prefill.num_gpus)
            dec: list[Slot] = [(decode, DECODE, 0)] * (n // decode.num_gpus)
            per_node = ([pre] * a + [dec] * (len(nodes) - a))
            placed = _place(cluster, per_node)
            if placed is not None:
                yield f"cross-node {a}P-nodes", placed


def _pooled_layouts(cluster: ClusterSpec, prefill: ReplicaConfig, decode: ReplicaConfig
                    ) -> Iterator[tuple[str, tuple[Replica, ...]]]:
    """One group over the whole cluster whose ``d`` decode replicas share their node with prefill
    replicas (decode on the last nodes, prefill on every GPU left; up to half the GPUs decode): the
    decode pool need not take whole nodes (on 32 GPUs of azure-code, 7 TP2 PP2 prefill replicas and one
    TP4 decode replica simulated 1.28x the best colocated plan, docs/evaluation-disaggregation.md).
    Decode pools of whole nodes are the cross-node layouts."""
    nodes = list(cluster.nodes.values())
    n, total = len(nodes[0]), sum(len(g) for g in nodes)
    per_node_decode = n // decode.num_gpus
    for d in range(1, total // 2 // decode.num_gpus + 1):
        if (d * decode.num_gpus) % n == 0:
            continue
        per_node: list[list[Slot]] = []
        left = d
        for _ in nodes[::-1]:
            k = min(per_node_decode, left)
            left -= k
            free = n - k * decode.num_gpus
            slots: list[Slot] = [(prefill, PREFILL, 0)] * (free // prefill.num_gpus)
            per_node.append(slots + [(decode, DECODE, 0)] * k)
        placed = _place(cluster, per_node[::-1])
        if placed is not None and left == 0:
            yield f"pooled {d}D", placed


def _group(prefill: ReplicaConfig, decode: ReplicaConfig, x: int, y: int, group: int) -> list[Slot]:
    slots: list[Slot] = [(prefill, PREFILL, group)] * x
    return slots + [(decode, DECODE, group)] * y


def pair_configs(tuned_hardware: list[ReplicaConfig], node_gpus: int, default_engine: bool = False
                 ) -> list[tuple[ReplicaConfig, ReplicaConfig]]:
    """(prefill, decode) hardware pairs at the engine defaults: the prefill side from every tuned hardware
    split, the decode side from the best few, the best few that fit twice in a node and the highest-TP
    one without PP; ``default_engine``: one configuration on both sides from the best few (Dynamo-style)."""
    ranked = list(dict.fromkeys(c.hardware for c in tuned_hardware))
    half = [c for c in ranked if 2 * c.num_gpus <= node_gpus]
    hw = list(dict.fromkeys(ranked[:NUM_PAIR_CONFIGS] + half[:NUM_PAIR_CONFIGS]))
    if default_engine:
        return [(h, h) for h in hw]
    flat = [c for c in ranked if c.pp == 1]
    wide = [max(flat, key=lambda c: c.tp)] if flat else []
    # the prefill side from every tuned split: which split prefills best alone is not which one serves
    # best colocated (on 32 GPUs of azure-code the best pair, TP2 PP2 -> TP4, had a prefill split outside
    # the best few; bench/results/disagg_enumerate); the decode side from the best few and the widest
    return [(p, d) for p in ranked for d in dict.fromkeys(hw + wide) if p.kv_cache_dtype == d.kv_cache_dtype]


def group_engines(replicas: tuple[Replica, ...], budget_tokens: int,
                  max_seqs: int = ENGINE_DEFAULT) -> tuple[Replica, ...]:
    """The replicas with the prefill side at chunk budget ``budget_tokens`` and the decode side at
    ``max_seqs`` (colocated replicas unchanged)."""
    out = []
    for r in replicas:
        if r.role == PREFILL:
            r = replace(r, config=r.config.with_engine(budget_tokens, r.config.max_num_seqs))
        elif r.role == DECODE:
            r = replace(r, config=r.config.with_engine(r.config.max_num_batched_tokens, max_seqs))
        out.append(r)
    return tuple(out)


def family_of(layout_name: str) -> str:
    """A layout's family: ``per-node``, ``cross-node``, ``pooled`` (the first word of its name)."""
    return layout_name.split()[0]


class Scored(Protocol):
    @property
    def predicted_scale(self) -> float: ...

    @property
    def replicas(self) -> tuple[Replica, ...]: ...


C = TypeVar("C", bound=Scored)


def search_groups(cluster: ClusterSpec, tuned_hardware: list[ReplicaConfig], num_types: int,
                  prompt_order: list[int], score: Callable[[str, tuple[Replica, ...], np.ndarray], C]
                  ) -> list[C]:
    """Group candidates, best predicted first (the module doc's steps 1-3); ``score(kind, replicas,
    fractions)`` predicts one; ``prompt_order``: the types, longest mean prompt first."""
    if not tuned_hardware:
        return []
    node_gpus = max(len(g) for g in cluster.nodes.values())
    every = set(range(num_types))
    best: list[C] = []
    for prefill, decode in pair_configs(tuned_hardware, node_gpus):
        scored = [(name, score(f"disaggregated {name}", group_engines(reps, b),
                               even_fractions(reps, num_types, every)))
                  for name, reps in layouts(cluster, prefill, decode) for b in PREFILL_BUDGETS]
        # the best per layout family (per-node, cross-node, pooled): the group model's error differs by
        # family (it underpredicts pooled groups), so each family's best reaches the shortlist's choice
        for family in dict.fromkeys(family_of(name) for name, _ in scored):
            name, top = max(((nm, c) for nm, c in scored if family_of(nm) == family),
                            key=lambda nc: nc[1].predicted_scale)
            budget = next(r.config.max_num_batched_tokens for r in top.replicas if r.role == PREFILL)
            seqs = [score(f"disaggregated {name}", reps, even_fractions(reps, num_types, every))
                    for reps in (group_engines(top.replicas, budget, n) for n in DECODE_MAX_SEQS if n)]
            best.append(max([top, *seqs], key=lambda c: c.predicted_scale))
    best.sort(key=lambda c: -c.predicted_scale)
    if not best or num_types < 2:
        return best
    top_reps = best[0].replicas
    prefill = next(r.config for r in top_reps if r.role == PREFILL)
    decode = next(r.config for r in top_reps if r.role == DECODE)
    hybrid: list[C] = []
    for name, reps in layouts(cluster, prefill, decode, tuned_hardware[0]):
        hybrid += [score(f"hybrid {name} {j} types", reps, even_fractions(reps, num_types,
                                                                           set(prompt_order[:j])))
                   for j in range(1, num_types)]
        # each type split between both parts
        hybrid.append(score(f"hybrid {name} split", reps, proportional_fractions(reps, num_types)))
    return sorted(best + hybrid, key=lambda c: -c.predicted_scale)


__all__ = ["DECODE_MAX_SEQS", "PREFILL_BUDGETS", "DisaggScorer", "even_fractions", "family_of",
           "group_engines", "layouts", "pair_configs", "proportional_fractions", "search_groups"]
