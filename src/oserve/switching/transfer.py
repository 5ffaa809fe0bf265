"""Weight transfer planning: which source sends each needed chunk to each destination GPU.

A destination GPU needs the chunks its target replica assigns it that it does not already hold.
Sources are the GPUs that hold a chunk in the current deployment and keep it during the switch: GPUs of
replicas that stay, GPUs that are freed, and GPUs being reconfigured whose old weights still fit beside
the new ones (otherwise they first drop the old chunks their new shard does not include, and offer
only the rest). Chunks travel directly from a holder: no GPU relays what it has just received.
The greedy rule takes, for each chunk, the least-loaded holder on the destination's node (NVLink),
else the least-loaded holder on another node (network), else storage. The duration is that of the most
loaded link in the fluid model (every link busy at capacity), which preemptive scheduling of the
transfers achieves for this bipartite traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.switching.links import STORAGE, Link, LinkModel
from oserve.switching.shards import Chunk, WeightLayout, layout_for
from oserve.switching.transition import Transition


@dataclass(frozen=True)
class Transfer:
    src: int  # GPU id, or STORAGE
    dst: int
    chunks: tuple[Chunk, ...]
    num_bytes: float


@dataclass(frozen=True)
class TransferPlan:
    transfers: tuple[Transfer, ...]
    link_bytes: dict  # Link -> bytes
    duration_s: float
    bottleneck: Link | None
    needs: dict  # dst GPU -> frozenset of chunks it must receive
    chunk_bytes: dict  # Chunk -> bytes

    @property
    def total_bytes(self) -> float:
        return sum(t.num_bytes for t in self.transfers)

    @property
    def storage_bytes(self) -> float:
        return sum(t.num_bytes for t in self.transfers if t.src == STORAGE)

    def summary(self) -> dict:
        by_kind: dict[str, float] = {}
        for (kind, _), b in self.link_bytes.items():
            if kind.endswith("send") or kind == "disk":
                by_kind[kind] = by_kind.get(kind, 0.0) + b
        return {"duration_s": self.duration_s, "total_gb": self.total_bytes / 1e9,
                "gb_by_link_kind": {k: v / 1e9 for k, v in sorted(by_kind.items())},
                "bottleneck": list(self.bottleneck) if self.bottleneck else None,
                "num_transfers": len(self.transfers)}


@dataclass(frozen=True)
class TransferProblem:
    """What must move and from where: needs per destination and the holders of each chunk."""

    needs: dict  # dst -> frozenset[Chunk]
    holders: dict  # Chunk -> tuple of source GPU ids
    layout: WeightLayout


def transfer_problem(transition: Transition, cost: CostModel) -> TransferProblem:
    layout = layout_for(cost.model, transition.current, transition.target)
    old = layout.holdings(transition.current)
    new = layout.holdings(transition.target)
    reconfigured = {g for r in transition.started for g in r.gpus}
    usable = _usable_bytes(cost, transition)
    needs = {}
    sources: dict[int, frozenset[Chunk]] = {}
    for gpu, chunks in old.items():
        if gpu in reconfigured:
            both = sum(layout.chunk_bytes(c) for c in chunks | new[gpu])
            if both > usable[gpu]:  # drops the old weights it will not keep before receiving
                chunks = chunks & new[gpu]
        sources[gpu] = chunks
    for gpu, chunks in new.items():
        missing = chunks - old.get(gpu, frozenset())
        if missing:
            needs[gpu] = frozenset(missing)
    holders: dict[Chunk, list[int]] = {}
    for gpu, chunks in sources.items():
        for c in chunks:
            holders.setdefault(c, []).append(gpu)
    return TransferProblem(needs, {c: tuple(sorted(h)) for c, h in holders.items()}, layout)


def _usable_bytes(cost: CostModel, transition: Transition) -> dict[int, float]:
    p = cost.params
    out = {}
    for r in transition.target:
        hbm = cost.gpu(r.config).hbm_bytes
        for g in r.gpus:
            out[g] = hbm * p.gpu_memory_utilization - p.reserved_bytes_per_gpu
    return out


GREEDY_RULES = ("same-node-first", "earliest-finish")


def plan_greedy(problem: TransferProblem, links: LinkModel, use_peers: bool = True,
                rule: str = "same-node-first") -> TransferPlan:
    """The greedy transfer plan; with ``use_peers=False`` every chunk is reloaded from storage.

    ``same-node-first``: the least-loaded holder on the destination's node, else on another node, else
    storage. ``earliest-finish``: among every holder and storage, the one whose two links would finish
    their load soonest with this chunk added (it spills onto the network or storage when NVLink is
    busy enough that they finish first).
    """
    if rule not in GREEDY_RULES:
        raise ConfigError(f"unknown greedy rule '{rule}', expected one of {GREEDY_RULES}")
    load: dict[Link, float] = {}
    picked: dict[tuple[int, int], list[Chunk]] = {}
    chunk_bytes = {}
    for dst in sorted(problem.needs):
        for chunk in sorted(problem.needs[dst]):
            size = problem.layout.chunk_bytes(chunk)
            chunk_bytes[chunk] = size
            holders = problem.holders.get(chunk, ()) if use_peers else ()
            if rule == "earliest-finish":
                src = _earliest_finish(holders, dst, size, links, load)
            else:
                src = _choose_source(holders, dst, links, load)
            for link in links.links(src, dst):
                load[link] = load.get(link, 0.0) + size
            picked.setdefault((src, dst), []).append(chunk)
    transfers = tuple(Transfer(s, d, tuple(cs), sum(chunk_bytes[c] for c in cs))
                      for (s, d), cs in sorted(picked.items()))
    duration, bottleneck = links.duration_s(load)
    return TransferPlan(transfers, load, duration, bottleneck, dict(problem.needs), chunk_bytes)


def _earliest_finish(holders, dst: int, size: float, links: LinkModel, load: dict[Link, float]) -> int:
    node = links.node_of(dst)

    def finish(src: int) -> tuple[float, int, int]:
        t = max((load.get(link, 0.0) + size) / links.capacity_bytes_s(link)
                for link in links.links(src, dst))
        return t, 0 if src != STORAGE and links.node_of(src) == node else 1, src

    return min([h for h in holders if h != dst] + [STORAGE], key=finish)


def _choose_source(holders, dst: int, links: LinkModel, load: dict[Link, float]) -> int:
    node = links.node_of(dst)
    local = [h for h in holders if h != dst and links.node_of(h) == node]
    remote = [h for h in holders if links.node_of(h) != node]
    for group, kind in ((local, "nvlink_send"), (remote, "nic_send")):
        if group:
            return min(group, key=lambda h: (load.get((kind, h), 0.0)
                                             / links.capacity_bytes_s((kind, h)), h))
    return STORAGE
