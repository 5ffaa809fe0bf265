"""Exhaustive check of the disaggregation search: every group candidate, simulated (no latency model).

For one (model, cluster size, trace, SLO) scenario this script lists every single-kind group candidate
the planner's layouts can express, for *every* (prefill, decode) hardware pair the cluster fits (not
only the planner's shortlisted pairs), at every prefill chunk budget of ``PREFILL_BUDGETS`` and every
decode ``max_num_seqs`` of ``DECODE_MAX_SEQS``, and finds the best one by simulation on the
verification window the planner uses (``sim.verify.verification_trace``):

1. every candidate is predicted by the group latency model (which orders the simulations);
2. the best colocated plan the planner verifies (its shortlist, simulated) sets the floor;
3. candidates are simulated best predicted first; each must beat the best so far by the goodput
   search's tolerance (one probe at that floor, pruned when it misses, as ``sim.verify`` does), so the
   best simulated candidate is exact and the others are known to be below it;
4. the ``--full`` best by the verification window are searched again on the whole trace window, as the
   evaluation (``bench/disagg_eval.py``) scores plans, beside the best colocated plan.

It writes ``<out>/<scenario>.json``: the candidate count, the best simulated candidates (window and
full trace), where the planner's own disaggregated shortlist ranks, and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.planner.disagg_search import (
    DECODE_MAX_SEQS,
    PREFILL_BUDGETS,
    even_fractions,
    group_engines,
    layouts,
)
from oserve.planner.slo_planner import Candidate, GoodputPlanner, candidate_plan, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.verify import plan_with_slo, verification_trace
from oserve.workload.slo import slo_from_flags

REL_TOL = 0.03  # the goodput search's tolerance (as sim.verify and sim.goodput)


def all_group_candidates(gp: GoodputPlanner) -> list[Candidate]:
    """Every (prefill, decode) hardware pair x layout x prefill budget x decode max_num_seqs, predicted."""
    k = gp.workload.num_types
    every = set(range(k))
    out = []
    for p in gp.hardware:
        for d in gp.hardware:
            if p.kv_cache_dtype != d.kv_cache_dtype:
                continue
            for name, reps in layouts(gp.cluster, p, d):
                for b in PREFILL_BUDGETS:
                    for n in DECODE_MAX_SEQS:
                        r = group_engines(reps, b, n) if n else group_engines(reps, b)
                        fr = even_fractions(r, k, every)
                        out.append(Candidate(f"enumerated {name}", r, fr, gp.predicted_scale(r, fr)))
    return out


def run(model: str, num_gpus: int, trace: str, slo_name: str, window_s: float, verify_requests: int,
        num_full: int) -> dict:
    t0 = time.perf_counter()
    config = SimConfig(drain_s=300.0)
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(f"{num_gpus // 8}x8xH100-80GB")
    prepared = prepare_trace(trace, cost, 4, config.seed, (0.0, window_s) if window_s else None)
    preset, _, tpot = slo_name.partition("@")
    slo = slo_from_flags(preset, None, float(tpot) if tpot else None, None)
    workload = slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
    gp = GoodputPlanner(cluster, cost, prepared.stats, workload, disaggregation=True)
    cands = all_group_candidates(gp)
    cands.sort(key=lambda c: -c.predicted_scale)
    planner_pick = [c.replicas for c in gp.disaggregated()[:2]]
    where = cluster.describe()
    coloc_plan, ver = plan_with_slo(cluster, cost, prepared, "oserve", slo, "goodput", config,
                                    verify_requests=verify_requests, disaggregation=False)
    if ver is None:
        raise RuntimeError("plan_with_slo verified no shortlist (verify_requests must be > 0)")
    coloc_window = ver.plan.simulated_goodput_scale or 0.0
    vt = verification_trace(prepared, verify_requests)
    busier = max(vt.trace.mean_rate_rps / max(prepared.trace.mean_rate_rps, 1e-12), 1.0)
    timers: dict = {}
    best, simulated = coloc_window, []
    for i, c in enumerate(cands):
        plan = candidate_plan(c, cost, prepared.stats, "goodput", c.kind, 0.0, where)
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=max(c.predicted_scale / busier, 1e-3),
                           rel_tol=REL_TOL, floor=best * (1 + REL_TOL), timers=timers)
        if not res.pruned:
            best = max(best, res.scale)
            simulated.append({"rank_predicted": i, "deployment": plan.describe(),
                              "predicted_goodput_scale": c.predicted_scale, "window_goodput_scale": res.scale,
                              "planner_shortlisted": c.replicas in planner_pick, "plan": plan})
    simulated.sort(key=lambda s: -s["window_goodput_scale"])
    full = {"colocated": {"deployment": coloc_plan.describe(), "window_goodput_scale": coloc_window,
                          "goodput_scale": plan_goodput(coloc_plan, prepared, cost, config, slo,
                                                        start_scale=coloc_window).scale}}
    for s in simulated[:num_full]:
        s["goodput_scale"] = plan_goodput(s["plan"], prepared, cost, config, slo,
                                          start_scale=s["window_goodput_scale"]).scale
    ranks = [i for i, c in enumerate(cands) if c.replicas in planner_pick]
    return {"model": model, "num_gpus": num_gpus, "trace": trace, "slo_preset": slo_name,
            "window_s": window_s, "verify_requests": len(vt.trace), "num_candidates": len(cands),
            "planner_shortlist_predicted_ranks": ranks, "colocated": full["colocated"],
            "beat_colocated_on_window": [{k: v for k, v in s.items() if k != "plan"} for s in simulated],
            "seconds": time.perf_counter() - t0, "git_revision": git_revision()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", required=True, help="MODEL:GPUS:TRACE:SLO, comma-separated")
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--verify-requests", type=int, default=1000)
    ap.add_argument("--full", type=int, default=4,
                    help="best window candidates searched again on the whole trace window")
    ap.add_argument("--out", default="bench/results/disagg_enumerate")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in args.scenarios.split(","):
        model, gpus, trace, slo = spec.split(":")
        path = out / f"{model}_{gpus}_{trace}_{slo}.json"
        if path.exists():
            continue
        res = run(model, int(gpus), trace, slo, args.window, args.verify_requests, args.full)
        path.write_text(json.dumps(res, indent=2))
        top = res["beat_colocated_on_window"][:1]
        print(f"{path.name}: {res['num_candidates']} candidates, colocated {res['colocated']}, best {top} "
              f"({res['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
