"""Spatial evaluation: OServe's plan against the `default` and `homogeneous` static deployments.

For each (model, cluster size, trace) scenario this script plans with the three planners, then simulates
the trace (a window of it, by default the first 20 minutes) to measure

  (a) P99 end-to-end latency at equal offered load, on a grid of rate scales around the rate at which the
      `homogeneous` deployment just meets the P99 bound, and
  (b) the highest rate scale each deployment sustains with P99 end-to-end latency within the bound.

The bound is ``--bound-factor`` (2) times the P99 end-to-end latency of the `homogeneous` deployment at a
light load (10% of its planned capacity): "P99 no worse than twice what the fleet gives when idle".

Results go to one JSON file per scenario in --out (default bench/results/spatial); existing files are
skipped, so the evaluation can run in parts (--models, --gpus, --traces) and be resumed.
`python bench/spatial_report.py` aggregates them into the tables and plots of docs/evaluation-spatial.md.
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
from oserve.sim.config import SimConfig
from oserve.sim.experiment import max_sustainable_scale, plan_for, prepare_trace, summary_at

MODELS = ("llama-2-70b", "opt-66b", "llama-30b", "opt-30b")
GPUS = (8, 16, 32)
TRACES = ("azure-conv", "azure-code", "azure-mix")
PLANNERS = ("oserve", "homogeneous", "default")
CURVE_FRACTIONS = (0.5, 0.7, 0.85, 1.0, 1.15)
KEEP = ("p99_e2e_s", "p50_e2e_s", "p99_ttft_s", "p99_tpot_s", "throughput_rps", "offered_rps",
        "completed", "dropped", "preemptions", "mean_utilisation", "sim_wall_s")


def cluster_spec(num_gpus: int) -> str:
    return f"{num_gpus // 8}x8xH100-80GB"


def _point(summary: dict, scale: float) -> dict:
    return {"scale": scale, **{k: summary.get(k) for k in KEEP}}


def run_scenario(model: str, num_gpus: int, trace: str, window_s: float, config: SimConfig,
                 bound_factor: float, rel_tol: float) -> dict:
    t0 = time.perf_counter()
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(cluster_spec(num_gpus))
    prepared = prepare_trace(trace, cost, 4, config.seed, (0.0, window_s) if window_s else None)
    plans = {p: plan_for(cluster, cost, prepared, p) for p in PLANNERS}
    cache: dict[tuple[str, float], dict] = {}  # identical deployments are simulated once

    def evaluate(name: str, scale: float) -> dict:
        return summary_at(plans[name], prepared, cost, config, scale, cache)

    homog = plans["homogeneous"]
    light = 0.1 * homog.demand_scale
    unloaded_p99 = evaluate("homogeneous", light)["p99_e2e_s"]
    bound = bound_factor * unloaded_p99
    searches = {}
    for name, plan in plans.items():
        res = max_sustainable_scale(plan, prepared, cost, config, bound, 0.7 * plan.demand_scale, rel_tol,
                                    cache)
        searches[name] = {"best_scale": res.best_scale, "probes": [list(p) for p in res.probes]}
    ref = searches["homogeneous"]["best_scale"] or homog.demand_scale
    curves = {name: [_point(evaluate(name, f * ref), f * ref) for f in CURVE_FRACTIONS] for name in plans}
    base_rate = prepared.trace.mean_rate_rps
    return {
        "model": model, "num_gpus": num_gpus, "cluster": cluster.describe(), "trace": trace,
        "window_s": window_s, "requests": len(prepared.trace), "base_rate_rps": base_rate,
        "requests_shortened_to_context": prepared.num_clipped,
        "type_stats": [s.__dict__ for s in prepared.stats],
        "online_mistype_rate": prepared.types.online_mistype_rate(prepared.trace),
        "plans": {n: p.to_dict() for n, p in plans.items()},
        "light_scale": light, "unloaded_p99_e2e_s": unloaded_p99, "p99_bound_s": bound,
        "max_sustainable": searches, "reference_scale": ref, "curve_fractions": list(CURVE_FRACTIONS),
        "curves": curves, "sim_config": config.model_dump(), "git_revision": git_revision(),
        "wall_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--gpus", default=",".join(str(g) for g in GPUS))
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--duration-s", type=float, default=1200.0, help="seconds of trace to use (0 = all)")
    ap.add_argument("--bound-factor", type=float, default=2.0)
    ap.add_argument("--rel-tol", type=float, default=0.05)
    ap.add_argument("--batching", default="chunked")
    ap.add_argument("--dispatch-policy", default=SimConfig.model_fields["dispatch"].default)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "spatial"))
    ap.add_argument("--force", action="store_true", help="recompute scenarios that already have results")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = SimConfig(batching=args.batching, dispatch=args.dispatch_policy, seed=args.seed)
    for model in args.models.split(","):
        for gpus in (int(g) for g in args.gpus.split(",")):
            for trace in args.traces.split(","):
                path = out / f"{model}_{gpus}gpu_{trace}.json"
                if path.exists() and not args.force:
                    continue
                t0 = time.perf_counter()
                try:
                    result = run_scenario(model, gpus, trace, args.duration_s, config, args.bound_factor,
                                          args.rel_tol)
                except Exception as exc:  # record and go on: one infeasible scenario must not stop the rest
                    result = {"model": model, "num_gpus": gpus, "trace": trace, "error": repr(exc)}
                path.write_text(json.dumps(result, indent=1))
                print(f"{path.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
