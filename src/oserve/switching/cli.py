"""``oserve transfer-plan``: the weight transfer from one deployment to another, against its lower bound
and against reloading from storage."""

from __future__ import annotations

import json
import re

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import ClusterSpec
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


def register(sub) -> None:
    from oserve.cli.common_args import add_cluster_model_args

    p = sub.add_parser("transfer-plan", help="plan moving weights from one deployment to another")
    add_cluster_model_args(p)
    p.add_argument("--from", dest="current", required=True, help="current deployment, e.g. TP8x2")
    p.add_argument("--to", dest="target", required=True, help="target deployment, e.g. TP4x4")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from oserve.cli.common_args import resolve

    cluster, _model, cost = resolve(args)
    current_counts = parse_deployment(args.current, cluster)
    current = pack(current_counts, cluster)
    if current is None:
        raise ConfigError(f"deployment '{args.current}' does not fit {cluster.describe()}")
    for cfg in list(current_counts) + list(parse_deployment(args.target, cluster)):
        if not cost.fits(cfg):
            raise ConfigError(f"{cfg.label()} cannot hold {cost.model.name} with KV room")
    transition = plan_transition(tuple(current), parse_deployment(args.target, cluster), cluster)
    links = LinkModel(cluster, IoProfile.h100())
    problem = transfer_problem(transition, cost)
    greedy = plan_greedy(problem, links)
    bound = transfer_lower_bound(problem, links)
    reload = plan_greedy(problem, links, use_peers=False)
    doc = {"cluster": cluster.describe(), "model": cost.model.name,
           "kept_replicas": len(transition.kept), "started_replicas": len(transition.started),
           "greedy": greedy.summary(), "lower_bound_s": bound.duration_s,
           "reload_from_storage_s": reload.duration_s,
           "transfers": [{"src": "storage" if t.src == STORAGE else t.src, "dst": t.dst,
                          "gb": t.num_bytes / 1e9, "chunks": len(t.chunks)} for t in greedy.transfers]}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    g = doc["greedy"]
    print(f"{cost.model.name} on {cluster.describe()}: {len(transition.kept)} replicas stay, "
          f"{len(transition.started)} start on {transition.moved_gpus} GPUs")
    print(f"  greedy peer-to-peer: {g['total_gb']:.1f} GB in {g['num_transfers']} transfers, "
          f"{g['duration_s']:.3f} s (bottleneck {g['bottleneck']})")
    for kind, gb in g["gb_by_link_kind"].items():
        print(f"    {kind:<12} {gb:8.1f} GB")
    print(f"  LP lower bound:      {bound.duration_s:.3f} s (greedy / bound = "
          f"{greedy.duration_s / bound.duration_s if bound.duration_s else 1.0:.2f})")
    print(f"  reload from storage: {reload.duration_s:.1f} s")
    return 0
