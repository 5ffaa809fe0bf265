"""Speed of the simulator itself: the full 1-hour Azure conv trace on 32 H100s, and how cost scales.

Writes bench/results/sim_speed.json and sim_speed.png. Target: the full trace (19,366 requests) on
32 GPUs in under 30 s of wall time on a 2-core machine. ``--scale 2,8,...,1024`` also measures the cost
per event against the number of TP4 replicas at constant load per replica (the conv trace looped to
``--requests-per-replica`` requests per replica, replayed at 0.5x its rate per replica) and writes
sim_speed_scale.json; it reports CPU time (``cpu_s``) next to wall time, as a shared machine's wall
time measures its other tenants too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.sim.api import batching_config, request_type_ids
from oserve.sim.config import SimConfig
from oserve.sim.experiment import plan_for, prepare_trace, simulate_at
from oserve.sim.simulator import Simulation, replicas_from_configs
from oserve.workload.trace import Trace


def _timed(plan, prepared, cost, config, scale=1.0) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    res = simulate_at(plan, prepared, cost, config, scale)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"requests": len(res.arrival_s), "replicas": len(plan.replicas), "gpus": plan.num_gpus,
            "rate_scale": scale, "wall_s": wall, "cpu_s": cpu, "events": res.num_events,
            "engine_steps": sum(r.num_steps for r in res.replicas),
            "completed": int(res.completed.sum()), "p99_e2e_s": res.summary()["p99_e2e_s"],
            "step_timer_hit_rate": res.meta.get("step_timer", {}).get("hit_rate"),
            "step_timer_miss_cpu_s": res.meta.get("step_timer", {}).get("miss_s")}


def _scale_case(cost, prepared, config, num_replicas: int, per_replica: int) -> dict:
    """``num_replicas`` TP4 replicas at the load per replica of 0.5x the conv trace each.

    The fleet is built directly (identical replicas, every type spread evenly over all of them, which is
    the plan the planners give a homogeneous fleet): the scan measures the simulator, not the planner,
    and goes beyond the planner's cluster-size limit."""
    trace = prepared.trace
    n = max(4000, per_replica * num_replicas)
    span = float(trace.arrival_s[-1]) + 1.0
    copies = [Trace(trace.arrival_s + j * span, trace.input_tokens, trace.output_tokens)
              for j in range(-(-n // len(trace)))]
    looped = Trace.merge(copies).head(n).scaled(0.5 * num_replicas)
    setups = replicas_from_configs([ReplicaConfig("H100-80GB", 4)] * num_replicas, cost)
    dispatch = DispatchTable(((1.0 / num_replicas,) * num_replicas,) * len(prepared.stats))
    sim = Simulation(setups, dispatch, config, batching_config(cost, config), cost.params.kv_block_tokens)
    types = request_type_ids(looped, prepared.types, config.oracle_types)
    t0, c0 = time.perf_counter(), time.process_time()
    res = sim.run(looped.arrival_s, looped.input_tokens, looped.output_tokens, types)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    misses = res.meta.get("step_timer", {"hit_rate": None, "miss_s": 0.0})  # absent before 2026-12
    row = {"requests": n, "replicas": num_replicas, "gpus": 4 * num_replicas,
           "rate_scale": 0.5 * num_replicas, "wall_s": wall, "cpu_s": cpu, "events": res.num_events,
           "completed": int(res.completed.sum()), "p99_e2e_s": res.summary()["p99_e2e_s"],
           "step_timer_hit_rate": misses["hit_rate"], "step_timer_miss_cpu_s": misses["miss_s"]}
    # CPU time of this process: on a shared machine wall time mostly measures the other tenants; the
    # cost-model calls of cache misses are a fixed cost per distinct step shape, not per event
    row["cpu_us_per_event"] = 1e6 * cpu / res.num_events
    row["cpu_us_per_event_without_misses"] = 1e6 * (cpu - misses["miss_s"]) / res.num_events
    row["requests_per_cpu_s"] = n / cpu
    print(f"{num_replicas} replicas: {n} requests, {wall:.1f} s wall, {cpu:.1f} s CPU, "
          f"{row['cpu_us_per_event']:.1f} CPU us/event ({row['cpu_us_per_event_without_misses']:.1f} "
          f"without cache misses), {row['requests_per_cpu_s']:.0f} req per CPU s", file=sys.stderr)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="llama-2-70b")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--quick", action="store_true", help="only the headline run")
    ap.add_argument("--requests", type=int, default=0,
                    help="use only the trace's first N requests (0: all; for smoke tests)")
    ap.add_argument("--scale", default="", help="replica counts for the per-event cost scan, e.g. 2,8,64")
    ap.add_argument("--requests-per-replica", type=int, default=200)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = CostModel(load_models().get(args.model))
    config = SimConfig()
    full = prepared = prepare_trace("azure-conv", cost)
    if args.requests:
        prepared = prepare_trace(full.trace.head(args.requests), cost)
    report = {"model": args.model, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_avg_before": os.getloadavg(), "git_revision": git_revision()}
    headline = {}
    for planner in ("default", "oserve"):
        plan = plan_for(parse_cluster("4x8xH100-80GB"), cost, prepared, planner)
        headline[planner] = {"deployment": plan.describe(), **_timed(plan, prepared, cost, config)}
        print(f"full trace, 32 GPUs, {planner} ({plan.describe()}): "
              f"{headline[planner]['wall_s']:.1f} s", file=sys.stderr)
    report["headline"] = headline
    if args.scale:
        scan = {"git_revision": report["git_revision"], "load_avg_before": os.getloadavg(),
                "by_replicas": [_scale_case(cost, full, config, int(r), args.requests_per_replica)
                                for r in args.scale.split(",")]}
        scan["load_avg_after"] = os.getloadavg()
        (out / "sim_speed_scale.json").write_text(json.dumps(scan, indent=1))
        if args.quick:
            return 0
    if not args.quick:
        plan32 = plan_for(parse_cluster("4x8xH100-80GB"), cost, prepared, "default")
        report["by_requests"] = []
        for n in sorted({min(n, len(prepared.trace)) for n in (2500, 5000, 10000, len(prepared.trace))}):
            sub = prepare_trace(prepared.trace.head(n), cost)
            report["by_requests"].append(_timed(plan32, sub, cost, config))
        report["by_replicas"] = []  # rate scaled with the cluster: same load per replica
        for nodes in (1, 2, 4, 8):
            plan = plan_for(parse_cluster(f"{nodes}x8xH100-80GB"), cost, prepared, "default")
            report["by_replicas"].append(_timed(plan, prepared, cost, config, nodes / 4 * 4.0))
        report["by_rate"] = [_timed(plan32, prepared, cost, config, s) for s in (1.0, 4.0, 8.0, 12.0)]
    report["load_avg_after"] = os.getloadavg()
    (out / "sim_speed.json").write_text(json.dumps(report, indent=1))
    if not args.quick:
        _plot(report, out / "sim_speed.png")
    print(json.dumps(report["headline"], indent=1))
    return 0


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, x, label in ((axes[0], "by_requests", "requests", "requests (1x rate, 32 GPUs)"),
                              (axes[1], "by_replicas", "replicas", "replicas (rate scaled with GPUs)"),
                              (axes[2], "by_rate", "rate_scale", "rate scale (32 GPUs)")):
        rows = report[key]
        ax.plot([r[x] for r in rows], [r["wall_s"] for r in rows], marker="o", label="wall s")
        ax.set_xlabel(label)
        ax.set_ylabel("simulator wall time (s)")
        ax.grid(True, alpha=0.3)
    fig.suptitle("oserve simulator speed (Azure conv, Llama-2-70B)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
