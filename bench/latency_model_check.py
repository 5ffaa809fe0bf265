"""The latency model against the simulator on whole windows: predicted and simulated SLO goodput per fleet.

For each scenario (``model_gpus_trace_slo``) the fleets are the homogeneous tuned fleets that
``bench/slo_mix_probe.py`` recorded for it (``bench/results/slo_mix_probe.json``: the six best by a
previous latency model, so the list does not depend on the model under test). Each fleet's SLO goodput
scale is predicted by the latency model of this revision (``planner.slo_planner.GoodputPlanner``) and,
with ``--before-src`` (a ``src`` directory of another revision, run as a subprocess), by that one too; and
simulated on the whole trace window (``sim.goodput.plan_goodput``, slo-spill router, 3%). The simulator
is the same for both, so the comparison is of the two models against one reference. Reports per fleet
and, per revision, the median and p90 of |log(predicted / simulated)| and the Spearman rank correlation
of predicted with simulated within each scenario. Writes ``<out>.json`` and ``<out>.md``.

    python bench/latency_model_check.py --scenarios llama-30b_16_azure-mix_loose,opt-66b_16_azure-mix_loose \\
        [--before-src /tmp/base/src] [--window 600] [--out bench/results/latency_model_check]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROBE = Path("bench/results/slo_mix_probe.json")


def fleets(scenario: str) -> list[str]:
    rows = json.loads(PROBE.read_text())[scenario]["rows"]
    return [r["deployment"] for r in rows if r["kind"] == "homogeneous"]


def setup(scenario: str, window_s: float):
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.planner.slo_planner import GoodputPlanner, candidate_plan, slo_workload
    from oserve.sim.experiment import prepare_trace
    from oserve.workload.slo import slo_from_flags

    model, gpus, trace, slo_name = scenario.split("_")
    cost = CostModel(load_models().get(model))
    prepared = prepare_trace(trace, cost, 4, 0, (0.0, window_s))
    slo = slo_from_flags(slo_name, None, None, None)
    gp = GoodputPlanner(parse_cluster(f"{int(gpus) // 8}x8xH100-80GB"), cost, prepared.stats,
                        slo_workload(prepared.trace, prepared.types, prepared.stats, slo))
    plans = {}
    for c in gp.homogeneous_tuned():
        plan = candidate_plan(c, cost, prepared.stats, "goodput", "check", 0.0)
        plans[plan.describe()] = (c, plan)
    return gp, cost, prepared, slo, plans


def predict(scenario: str, window_s: float) -> dict[str, float]:
    gp, _, _, _, plans = setup(scenario, window_s)
    return {d: gp.predicted_scale(plans[d][0].replicas, plans[d][0].fractions) for d in fleets(scenario)}


def before_predictions(src: str, scenario: str, window_s: float) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, __file__, "--predict-only", "--scenarios", scenario, "--window", str(window_s)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)[scenario]


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def summary(rows: list[dict], key: str) -> dict:
    err = [abs(np.log(r[key] / r["simulated"])) for r in rows if r[key] and r["simulated"]]
    per = {}
    for r in rows:
        per.setdefault(r["scenario"], []).append(r)
    rho = [spearman([r[key] for r in rs], [r["simulated"] for r in rs]) for rs in per.values()]
    return {"n": len(err), "median_abs_log_error": float(np.median(err)) if err else None,
            "p90_abs_log_error": float(np.quantile(err, 0.9)) if err else None,
            "mean_spearman": float(np.nanmean(rho)) if rho else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--before-src", default=None)
    ap.add_argument("--predict-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/results/latency_model_check")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    if args.predict_only:
        print(json.dumps({s: predict(s, args.window) for s in scenarios}))
        return
    from oserve.common.provenance import git_revision
    from oserve.sim.config import SimConfig
    from oserve.sim.goodput import plan_goodput

    config = SimConfig(drain_s=300.0, dispatch="slo-spill")
    rows = []
    t0 = time.perf_counter()
    for scenario in scenarios:
        gp, cost, prepared, slo, plans = setup(scenario, args.window)
        before = before_predictions(args.before_src, scenario, args.window) if args.before_src else {}
        timers: dict = {}
        for d in fleets(scenario):
            cand, plan = plans[d]
            pred = gp.predicted_scale(cand.replicas, cand.fractions)
            start = max(before.get(d, 0.0), pred, 0.05)
            sim = plan_goodput(plan, prepared, cost, config, slo, start_scale=start, timers=timers).scale
            rows.append({"scenario": scenario, "deployment": d, "predicted": pred,
                         "predicted_before": before.get(d), "simulated": sim})
            print(f"{scenario} {d}: before {before.get(d)} after {pred:.3f} simulated {sim:.3f}",
                  file=sys.stderr, flush=True)
    result = {"scenarios": scenarios, "window_s": args.window, "rows": rows,
              "after": summary(rows, "predicted"),
              "before": summary(rows, "predicted_before") if args.before_src else None,
              "before_src": args.before_src, "seconds": time.perf_counter() - t0,
              "git_revision": git_revision()}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# Latency model vs simulator, whole {args.window:.0f}-s windows "
             f"(revision {result['git_revision']})", "",
             "| scenario | fleet | predicted before | predicted after | simulated |", "|---|---|---|---|---|"]
    for r in rows:
        b = f"{r['predicted_before']:.3f}" if r["predicted_before"] is not None else "-"
        lines.append(f"| {r['scenario']} | {r['deployment']} | {b} | {r['predicted']:.3f} "
                     f"| {r['simulated']:.3f} |")
    lines += ["", "| model | fleets | median abs log error | p90 | mean Spearman within scenario |",
              "|---|---|---|---|---|"]
    for name in ("before", "after"):
        s = result[name]
        if s:
            lines.append(f"| {name} | {s['n']} | {s['median_abs_log_error']:.3f} "
                         f"| {s['p90_abs_log_error']:.3f} | {s['mean_spearman']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
