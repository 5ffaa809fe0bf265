"""The weight transfer from one deployment to another, against its lower bound and against reloading
from storage (what ``oserve transfer-plan`` prints), and the ``TP4x2,TP8x1`` deployment notation."""

from __future__ import annotations

import re
from typing import Any

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.placement import pack
from oserve.switching.io_profile import IoProfile
from oserve.switching.links import STORAGE, LinkModel
from oserve.switching.transfer import plan_greedy, transfer_problem
from oserve.switching.transfer_bound import transfer_lower_bound
from oserve.switching.transition import plan_transition

_PART = re.compile(r"^(?:(?P<gpu>[^:]+):)?TP(?P<tp>\d+)(?:PP(?P<pp>\d+))?x(?P<n>\d+)$", re.IGNORECASE)


def parse_deployment(text: str, cluster: ClusterSpec) -> dict[ReplicaConfig, int]:
    """``TP4x2,TP8PP1x1`` or ``H100-80GB:TP4x2``: replica counts per configuration."""
    out: dict[ReplicaConfig, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = _PART.match(part)
        if not m:
            raise ConfigError(f"deployment part '{part}': expected [GPU:]TP<t>[PP<p>]x<count>, e.g. TP4x2")
        gpu = m.group("gpu") or cluster.gpu_types[0]
        gpu = cluster.gpu_spec(gpu).name
        cfg = ReplicaConfig(gpu, int(m.group("tp")), int(m.group("pp") or 1))
        out[cfg] = out.get(cfg, 0) + int(m.group("n"))
    return out


def transfer_report(current_text: str, target_text: str, cluster: ClusterSpec,
                    cost: CostModel) -> dict[str, Any]:
    """Greedy peer-to-peer plan, LP lower bound and reload time of moving ``current`` to ``target``."""
    current_counts = parse_deployment(current_text, cluster)
    target_counts = parse_deployment(target_text, cluster)
    current = pack(current_counts, cluster)
    if current is None:
        raise ConfigError(f"deployment '{current_text}' does not fit {cluster.describe()}")
    for cfg in list(current_counts) + list(target_counts):
        if not cost.fits(cfg):
            raise ConfigError(f"{cfg.label()} cannot hold {cost.model.name} with KV room")
    transition = plan_transition(tuple(current), target_counts, cluster)
    links = LinkModel(cluster, IoProfile.h100())
    problem = transfer_problem(transition, cost)
    greedy = plan_greedy(problem, links)
    bound = transfer_lower_bound(problem, links)
    reload = plan_greedy(problem, links, use_peers=False)
    return {"cluster": cluster.describe(), "model": cost.model.name,
            "kept_replicas": len(transition.kept), "started_replicas": len(transition.started),
            "moved_gpus": transition.moved_gpus,
            "greedy": greedy.summary(), "lower_bound_s": bound.duration_s,
            "reload_from_storage_s": reload.duration_s,
            "transfers": [{"src": "storage" if t.src == STORAGE else t.src, "dst": t.dst,
                           "gb": t.num_bytes / 1e9, "chunks": len(t.chunks)} for t in greedy.transfers]}


def render(doc: dict[str, Any]) -> str:
    g = doc["greedy"]
    lines = [f"{doc['model']} on {doc['cluster']}: {doc['kept_replicas']} replicas stay, "
             f"{doc['started_replicas']} start on {doc['moved_gpus']} GPUs",
             f"  greedy peer-to-peer: {g['total_gb']:.1f} GB in {g['num_transfers']} transfers, "
             f"{g['duration_s']:.3f} s (bottleneck {g['bottleneck']})"]
    lines += [f"    {kind:<12} {gb:8.1f} GB" for kind, gb in g["gb_by_link_kind"].items()]
    bound = doc["lower_bound_s"]
    lines += [f"  LP lower bound:      {bound:.3f} s (greedy / bound = "
              f"{g['duration_s'] / bound if bound else 1.0:.2f})",
              f"  reload from storage: {doc['reload_from_storage_s']:.1f} s"]
    return "\n".join(lines)


__all__ = ["parse_deployment", "render", "transfer_report"]
