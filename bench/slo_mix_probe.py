"""Does heterogeneity pay on the mixed trace? Two-configuration fleets simulated against the tuned fleet.

The goodput planner's shortlist (``planner.slo_planner``) rarely holds a mixed fleet on azure-mix, and the
ones it holds are pruned by the simulator. This probe asks the simulator directly, outside the planner:
for a scenario it simulates the best ``--configs`` homogeneous tuned fleets (hardware and chunk budget,
by the latency model), takes the ``--pair`` best of them *by simulated goodput* (so the model's ranking
does not decide what is mixed), and for every pair (A, B) of those and every split of the GPUs between
them builds the fleet with two dispatches: the LP's per-type primary fractions over the pair's per-type
SLO capacities (the ``oserve`` search's dispatch) and every type spread over every replica in proportion
to its GPUs. Each fleet is simulated with the ``slo-spill`` router on the shortlist's verification trace
(``sim.verify.verification_trace``) and its SLO goodput scale searched (5%). It reports the best mixed
fleet's simulated goodput over the best homogeneous one: above 1.1x heterogeneity pays and the planner
misses it; at or below 1.0x nothing in this space beats the tuned fleet in the simulator. It also
records each type's SLO capacity alone on each configuration (latency model): specialising can pay only
where types prefer different configurations.

    python bench/slo_mix_probe.py --models llama-2-70b --slos loose,tight [--configs 6 --pair 3]
Writes bench/results/slo_mix_probe.{json,md} (merging with scenarios already there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from oserve.common.errors import InfeasiblePlanError
from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.slo_capacity import slo_capacity_rps
from oserve.planner.api import build_plan
from oserve.planner.placement import pack
from oserve.planner.problem import PlanningProblem
from oserve.planner.slo_planner import Candidate, GoodputPlanner, candidate_plan, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.verify import MIN_VERIFY_REQUESTS, verification_trace
from oserve.workload.slo import slo_from_flags


def mixed_fleets(gp: GoodputPlanner, configs, num_gpus: int):
    """(label, replicas, fractions) of every pair of ``configs`` at every split of the GPUs, with the LP's
    per-type primary fractions and with GPU-proportional shares."""
    k = gp.workload.num_types
    start = max(gp.workload.rates_rps) or 1.0
    for a, b in itertools.combinations(configs, 2):
        for na in range(1, num_gpus // a.num_gpus):
            nb = (num_gpus - na * a.num_gpus) // b.num_gpus
            if nb < 1 or na * a.num_gpus + nb * b.num_gpus != num_gpus:
                continue
            packed = pack({a: na, b: nb}, gp.cluster)
            if not packed:
                continue
            replicas = tuple(packed)
            w = np.array([r.config.num_gpus for r in replicas], dtype=float)
            yield "mixed, GPU-proportional", replicas, np.tile(w / w.sum(), (k, 1))
            capacity = np.array([[slo_capacity_rps(gp.model(c), t, gp.workload, start_rps=start, rel_tol=0.1)
                                  if gp.workload.rates_rps[t] > 0 else 1.0 for t in range(k)]
                                 for c in (a, b)])
            problem = PlanningProblem(gp.cluster, gp.cost, gp.stats, config_list=[a, b],
                                      capacity_matrix=capacity)
            try:
                plan = build_plan(problem, [na, nb], "probe", 0.0)
            except InfeasiblePlanError:
                continue
            yield "mixed, LP primary", plan.replicas, np.asarray(plan.dispatch, dtype=float)


def run(model: str, num_gpus: int, trace: str, slo_name: str, num_configs: int, num_pair: int,
        window_s: float) -> dict:
    t0 = time.perf_counter()
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(f"{num_gpus // 8}x8xH100-80GB")
    prepared = prepare_trace(trace, cost, 4, 0, (0.0, window_s))
    slo = slo_from_flags(slo_name, None, None, None)
    gp = GoodputPlanner(cluster, cost, prepared.stats, slo_workload(prepared.trace, prepared.types,
                                                                    prepared.stats, slo))
    tuned = [c for c in gp.homogeneous_tuned() if c.predicted_scale > 0][:num_configs]
    # which configuration each type would pick alone: the latency model's per-type SLO capacity (req/s of
    # that type alone at the target); specialising pays only where types prefer different configurations
    start = max(gp.workload.rates_rps) or 1.0
    capacity = {c.replicas[0].config.label(): [
        slo_capacity_rps(gp.model(c.replicas[0].config), t, gp.workload, start_rps=start, rel_tol=0.05)
        for t in range(gp.workload.num_types)] for c in tuned}
    vt = verification_trace(prepared, MIN_VERIFY_REQUESTS)
    busier = max(vt.trace.mean_rate_rps / max(prepared.trace.mean_rate_rps, 1e-12), 1.0)
    config = SimConfig(drain_s=300.0, dispatch="slo-spill")
    timers: dict = {}
    rows = []

    def simulate(kind: str, replicas, fractions) -> dict:
        pred = gp.predicted_scale(replicas, fractions)
        plan = candidate_plan(Candidate(kind, replicas, fractions, pred), cost, prepared.stats, "goodput",
                              "probe", 0.0)
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=max(pred / busier, 1e-3), rel_tol=0.05,
                           timers=timers)
        row = {"kind": kind, "deployment": plan.describe(), "predicted": pred, "simulated": res.scale}
        rows.append(row)
        print(f"  {kind}: {plan.describe()} predicted {pred:.3f} simulated {res.scale:.3f}",
              file=sys.stderr, flush=True)
        return row

    # the homogeneous fleets first; the pairs are of the best ``num_pair`` by *simulated* goodput, so
    # that the latency model's ranking does not decide which configurations are mixed
    homo_rows = [(simulate("homogeneous", c.replicas, c.fractions), c.replicas[0].config) for c in tuned]
    paired = [cfg for _, cfg in sorted(homo_rows, key=lambda x: -x[0]["simulated"])[:num_pair]]
    for kind, replicas, fractions in mixed_fleets(gp, paired, num_gpus):
        simulate(kind, replicas, fractions)
    configs = [cfg for _, cfg in homo_rows]
    homo = max((r for r in rows if r["kind"] == "homogeneous"), key=lambda r: r["simulated"])
    mixed = max((r for r in rows if r["kind"] != "homogeneous"), key=lambda r: r["simulated"], default=None)
    return {"model": model, "num_gpus": num_gpus, "trace": trace, "slo": slo_name,
            "configs": [c.label() for c in configs], "paired": [c.label() for c in paired],
            "verification_requests": len(vt.trace),
            "types": prepared.types.names(), "type_slo_capacity_rps": capacity,
            "rows": rows, "best_homogeneous": homo, "best_mixed": mixed,
            "mixed_over_homogeneous": (mixed["simulated"] / homo["simulated"]
                                       if mixed and homo["simulated"] > 0 else None),
            "seconds": time.perf_counter() - t0, "git_revision": git_revision()}


def report(results: dict) -> str:
    lines = ["| scenario | configs | best homogeneous (sim) | best mixed (sim) | mixed / homogeneous |",
             "|---|---|---|---|---|"]
    for key, r in sorted(results.items()):
        h, m = r["best_homogeneous"], r["best_mixed"]
        mixed = f"{m['deployment']}, {m['kind']} ({m['simulated']:.3f})" if m else "-"
        ratio = f"{r['mixed_over_homogeneous']:.3f}" if r["mixed_over_homogeneous"] else "-"
        lines.append(f"| {key} | {', '.join(r['configs'])} | {h['deployment']} ({h['simulated']:.3f}) "
                     f"| {mixed} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama-2-70b")
    ap.add_argument("--gpus", type=int, default=16)
    ap.add_argument("--trace", default="azure-mix")
    ap.add_argument("--slos", default="loose,tight")
    ap.add_argument("--configs", type=int, default=6, help="best predicted tuned fleets to simulate")
    ap.add_argument("--pair", type=int, default=3, help="best simulated of those to mix in pairs")
    ap.add_argument("--window", type=float, default=1200.0)
    ap.add_argument("--out", default="bench/results/slo_mix_probe")
    args = ap.parse_args(argv)
    path = Path(args.out + ".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    for model in args.models.split(","):
        for slo in args.slos.split(","):
            key = f"{model}_{args.gpus}_{args.trace}_{slo}"
            if key in results:
                continue
            print(key, file=sys.stderr, flush=True)
            results[key] = run(model, args.gpus, args.trace, slo, args.configs, args.pair, args.window)
            path.write_text(json.dumps(results, indent=1))
    text = report(results)
    Path(args.out + ".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
