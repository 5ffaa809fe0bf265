"""Weight transfer plans: greedy (least-loaded source, same node first) against the LP lower bound and
against reloading from storage, for deployment changes of Llama-2 13B and 70B on 16 and 32 H100s.

Link rates: NCCL send/recv for 1 GB messages from the shipped H100 profile (~366 GB/s per GPU within a
node, ~33 GB/s per GPU across nodes); storage 1.87 GB/s per node and host-to-device 55 GB/s per GPU,
measured on an H100 machine (oserve/data/h100_io_profile.csv). Durations are the fluid-model time of
the most loaded link; engine restart and communicator set-up are not included. Two greedy rules:
same-node-first (the issue's rule) and earliest-finish (also spills onto the network and storage).
Writes bench/results/transfer_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.placement import pack
from oserve.switching import (
    IoProfile,
    LinkModel,
    plan_greedy,
    plan_transition,
    transfer_lower_bound,
    transfer_problem,
)

H = "H100-80GB"


def c(tp, pp=1):
    return ReplicaConfig(H, tp, pp)


CASES = [
    ("llama-2-70b", "2x8xH100", "TP8 -> TP4", {c(8): 2}, {c(4): 4}),
    ("llama-2-70b", "2x8xH100", "TP4 -> TP8", {c(4): 4}, {c(8): 2}),
    ("llama-2-70b", "2x8xH100", "TP4 -> TP4+TP8 mix", {c(4): 4}, {c(4): 2, c(8): 1}),
    ("llama-2-70b", "2x8xH100", "TP4 -> TP2 PP2", {c(4): 4}, {c(2, 2): 4}),
    ("llama-2-70b", "2x8xH100", "TP8 -> TP4 PP2", {c(8): 2}, {c(4, 2): 2}),
    ("llama-2-70b", "4x8xH100", "TP4 x8 -> TP8 x4", {c(4): 8}, {c(8): 4}),
    ("llama-2-70b", "4x8xH100", "scale out TP8 x2 -> x4", {c(8): 2}, {c(8): 4}),
    ("llama-2-70b", "4x8xH100", "scale out TP4 x2 -> x8", {c(4): 2}, {c(4): 8}),
    ("llama-2-70b", "4x8xH100", "TP8 -> TP2 (old+new do not fit)", {c(8): 4}, {c(2): 16}),
    ("llama-2-13b", "2x8xH100", "conv plan -> code plan",
     {c(1, 2): 2, c(2, 2): 3}, {c(1): 2, c(1, 2): 7}),
    ("llama-2-13b", "2x8xH100", "TP2 x8 -> TP1 x16", {c(2): 8}, {c(1): 16}),
    ("llama-2-13b", "2x8xH100", "scale out TP2 x2 -> x8", {c(2): 2}, {c(2): 8}),
]


def one(model: str, cluster_spec: str, label: str, before: dict, after: dict) -> dict:
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(cluster_spec)
    links = LinkModel(cluster, IoProfile.h100())
    transition = plan_transition(tuple(pack(before, cluster)), after, cluster)
    problem = transfer_problem(transition, cost)
    t0 = time.perf_counter()
    greedy = plan_greedy(problem, links)
    t1 = time.perf_counter()
    bound = transfer_lower_bound(problem, links)
    t2 = time.perf_counter()
    reload = plan_greedy(problem, links, use_peers=False)
    finish = plan_greedy(problem, links, rule="earliest-finish")
    summary = greedy.summary()
    return {"model": model, "cluster": cluster_spec, "change": label,
            "kept_replicas": len(transition.kept), "moved_gpus": transition.moved_gpus,
            "needed_gb": sum(problem.layout.chunk_bytes(ch) for cs in problem.needs.values() for ch in cs)
            / 1e9, "greedy_s": greedy.duration_s, "bound_s": bound.duration_s,
            "greedy_over_bound": greedy.duration_s / bound.duration_s if bound.duration_s else 1.0,
            "earliest_finish_s": finish.duration_s,
            "earliest_finish_over_bound": finish.duration_s / bound.duration_s if bound.duration_s else 1.0,
            "reload_s": reload.duration_s, "gb_by_link_kind": summary["gb_by_link_kind"],
            "bottleneck": summary["bottleneck"], "greedy_plan_s": t1 - t0, "bound_lp_s": t2 - t1,
            "lp_variables": bound.num_variables}


def markdown(rows) -> str:
    lines = ["| model | cluster | change | GB to move | greedy same-node-first (s) | LP bound (s) | "
             "greedy/bound | earliest-finish/bound | reload from storage (s) | "
             "GB over NVLink / network / storage (greedy) | plan+LP time (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        k = r["gb_by_link_kind"]
        split = (f"{k.get('nvlink_send', 0):.0f} / {k.get('nic_send', 0):.0f} / "
                 f"{k.get('disk', 0):.0f}")
        lines.append(f"| {r['model']} | {r['cluster']} | {r['change']} | {r['needed_gb']:.0f} | "
                     f"{r['greedy_s']:.3f} | {r['bound_s']:.3f} | {r['greedy_over_bound']:.3f} | "
                     f"{r['earliest_finish_over_bound']:.3f} | "
                     f"{r['reload_s']:.1f} | {split} | {r['greedy_plan_s'] + r['bound_lp_s']:.2f} |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(rows))
    for off, key, label in ((-0.27, "bound_s", "LP lower bound"), (0, "greedy_s", "greedy p2p"),
                            (0.27, "reload_s", "reload from storage")):
        ax.bar(x + off, [max(r[key], 1e-3) for r in rows], 0.27, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("transfer time (s, log)")
    ax.set_xticks(x, [f"{r['model'].replace('llama-2-', '')} {r['cluster']}\n{r['change']}" for r in rows],
                  fontsize=6, rotation=30, ha="right")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [one(*case) for case in CASES]
    (out / "transfer_bench.json").write_text(json.dumps(
        {"meta": {"git_revision": git_revision()}, "results": rows}, indent=2))
    (out / "transfer_bench.md").write_text(markdown(rows) + "\n")
    plot(rows, out / "transfer_bench.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
