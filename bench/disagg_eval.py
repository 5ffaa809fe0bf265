"""Disaggregation evaluation: SLO goodput with and without prefill/decode groups (simulated).

For each (model, cluster size, trace, SLO preset) scenario, a subset of the SLO-goodput benchmark's
(``bench/slo_goodput_eval.py``), this script plans with

* ``oserve+disagg``: the goodput planner with disaggregated candidates (``--disaggregation on``), its
  shortlist verified by the simulator;
* ``oserve``: the same planner without them, i.e. the best colocated plan it finds (verified shortlist);
* ``homogeneous-tuned``: the best single configuration with the best uniform engine settings;
* ``dynamo``: a Dynamo-style fixed split: one configuration on both sides at vLLM's default engine
  settings, the best homogeneous xPyD split by the latency model (``GoodputPlanner.dynamo_split``);

then searches each plan's SLO goodput scale on the trace window (``oserve.sim.goodput``: the highest
rate scale at which every type has 90% of its requests within TTFT and TPOT bounds). Per plan it records
the goodput scale, the predicted scale, the deployment and per-type TTFT / TPOT attainment at the goodput
scale (which bound binds). One JSON per scenario in --out (default bench/results/disagg); existing files
are skipped; ``--report`` aggregates them into ``<out>_summary.md`` / ``.json`` (ratios side by side in
one run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.verify import plan_with_slo, verification_trace
from oserve.workload.slo import slo_from_flags

SCENARIOS = ("llama-2-70b:16:azure-conv:tight", "llama-2-70b:16:azure-code:tight",
             "llama-2-70b:16:azure-mix:tight", "llama-2-70b:16:azure-mix:loose",
             "llama-2-70b:8:azure-code:tight", "llama-30b:16:azure-code:tight",
             # where disaggregation should pay: more GPUs, the 128k model (prompts unclipped), a
             # stricter TPOT bound (tight@0.03: the tight preset with TPOT <= 30 ms)
             "llama-2-70b:32:azure-mix:tight", "llama-2-70b:32:azure-code:tight",
             "llama-2-70b:32:azure-conv:tight",
             "llama-3.1-70b:16:azure-code:tight", "llama-3.1-70b:32:azure-code:tight",
             "llama-2-70b:16:azure-mix:tight@0.03")
MODEL_CHECK_GROUPS = 4  # group candidates simulated in full beside the best colocated (model check)
PLANNERS = ("oserve+disagg", "oserve", "homogeneous-tuned", "dynamo")


def _attainment_split(res, slo, names: list[str]) -> dict:
    """Per-type share of requests within the TTFT bound and within the TPOT bound at the goodput scale."""
    best = res.best
    ttft, tpot = slo.bounds(best.type_id, names, best.input_tokens)
    out = {"ttft_ok": [], "tpot_ok": []}
    for t in range(len(names)):
        m = best.type_id == t
        if not m.any():
            out["ttft_ok"].append(None)
            out["tpot_ok"].append(None)
            continue
        out["ttft_ok"].append(float((np.nan_to_num(best.ttft_s[m], nan=np.inf) <= ttft[m]).mean()))
        out["tpot_ok"].append(float((np.nan_to_num(best.tpot_s[m], nan=np.inf) <= tpot[m]).mean()))
    return out


def model_check(planner: GoodputPlanner, cost: CostModel, prepared, slo, config: SimConfig,
                cluster: str, verify_requests: int) -> list[dict]:
    """The group latency model against the simulator: the best colocated fleet and the best
    ``MODEL_CHECK_GROUPS`` group candidates, each predicted and simulated in full (no pruning) on the
    verification window, with which bound binds at the simulated goodput."""
    vt = verification_trace(prepared, verify_requests)
    busier = max(vt.trace.mean_rate_rps / max(prepared.trace.mean_rate_rps, 1e-12), 1.0)
    names = prepared.types.names()
    timers: dict = {}
    out = []
    groups = [c for c in planner.disaggregated() if c.predicted_scale > 0][:MODEL_CHECK_GROUPS]
    for c in [planner.homogeneous_tuned()[0], *groups]:
        plan = candidate_plan(c, cost, prepared.stats, "goodput", c.kind, 0.0, cluster)
        res = plan_goodput(plan, vt, cost, config, slo, start_scale=max(c.predicted_scale / busier, 1e-3),
                           timers=timers)
        entry = {"kind": c.kind, "deployment": plan.describe(), "predicted_goodput_scale": c.predicted_scale,
                 "simulated_goodput_scale": res.scale,
                 "predicted_over_simulated": c.predicted_scale / res.scale if res.scale > 0 else None}
        if res.best is not None:
            entry.update(_attainment_split(res, slo, names))
        out.append(entry)
    return out


def parse_slo(name: str):
    """``preset`` or ``preset@TPOT_S`` (the preset with its TPOT bound replaced)."""
    preset, _, tpot = name.partition("@")
    return slo_from_flags(preset, None, float(tpot) if tpot else None, None)


def run_scenario(model: str, num_gpus: int, trace: str, slo_name: str, window_s: float,
                 verify_requests: int, config: SimConfig) -> dict:
    t0 = time.perf_counter()
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(f"{num_gpus // 8}x8xH100-80GB")
    prepared = prepare_trace(trace, cost, 4, config.seed, (0.0, window_s) if window_s else None)
    slo = parse_slo(slo_name)
    names = prepared.types.names()
    out = {"model": model, "num_gpus": num_gpus, "cluster": cluster.describe(), "trace": trace,
           "slo": slo.describe(), "slo_preset": slo_name, "window_s": window_s,
           "requests": len(prepared.trace), "types": names, "verify_requests": verify_requests,
           "planners": {}}
    plans, verifications = {}, {}
    for name, disagg in (("oserve+disagg", True), ("oserve", False)):
        plans[name], ver = plan_with_slo(cluster, cost, prepared, "oserve", slo, "goodput", config,
                                         verify_requests=verify_requests, disaggregation=disagg)
        verifications[name] = ver.to_dict() if ver is not None else None
    plans["homogeneous-tuned"], _ = plan_with_slo(cluster, cost, prepared, "homogeneous-tuned", slo,
                                                  "goodput", config)
    workload = slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
    planner = GoodputPlanner(cluster, cost, prepared.stats, workload, disaggregation=True)
    dyn = planner.dynamo_split()
    if dyn is not None:
        plans["dynamo"] = candidate_plan(dyn, cost, prepared.stats, "goodput", "dynamo", 0.0,
                                         cluster.describe())
    done: dict[str, dict] = {}
    for name, plan in plans.items():
        key = json.dumps([plan.to_dict()["replicas"], plan.dispatch])
        if key not in done:
            res = plan_goodput(plan, prepared, cost, config, slo,
                               start_scale=max(plan.predicted_goodput_scale or 1.0, 1e-3))
            entry = {"goodput_scale": res.scale}
            if res.best is not None:
                entry.update(_attainment_split(res, slo, names))
            done[key] = entry
        out["planners"][name] = {**done[key], "deployment": plan.describe(),
                                 "disaggregated": plan.is_disaggregated,
                                 "predicted_goodput_scale": plan.predicted_goodput_scale,
                                 "planner_seconds": plan.planner_seconds,
                                 # the shortlist the simulator chose from (on the verification window)
                                 "verification": verifications.get(name)}
    out["model_check"] = model_check(planner, cost, prepared, slo, config, cluster.describe(),
                                     verify_requests)
    out["seconds"] = time.perf_counter() - t0
    out["git_revision"] = git_revision()
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def report(results_dir: Path) -> str:
    rows = []
    ratios: dict[str, list[float]] = {"oserve": [], "homogeneous-tuned": [], "dynamo": []}
    tight_over_colocated = []
    checks: list[str] = []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        p = r["planners"]
        g = {n: p[n]["goodput_scale"] if n in p else float("nan") for n in PLANNERS}
        for b in ratios:
            x = _ratio(g["oserve+disagg"], g[b]) if b in p else None
            if x is not None:
                ratios[b].append(x)
        if r["slo_preset"] == "tight" and g["oserve"] > 0:
            tight_over_colocated.append(g["oserve+disagg"] / g["oserve"])
        over = _ratio(g["oserve+disagg"], g["oserve"])
        rows.append(f"| {r['model']} | {r['num_gpus']} | {r['trace']} | {r['slo_preset']} | "
                    + " | ".join(f"{g[n]:.3f}" for n in PLANNERS)
                    + f" | {over:.2f}x | {p['oserve+disagg']['deployment']} "
                      f"| {p.get('dynamo', {}).get('deployment', '-')} |")
        for c in r.get("model_check", []):
            ratio = c["predicted_over_simulated"]
            binds = (f"{min(x for x in c['ttft_ok'] if x is not None):.2f} / "
                     f"{min(x for x in c['tpot_ok'] if x is not None):.2f}" if "ttft_ok" in c else "-")
            name = f"{r['model']}/{r['num_gpus']}/{r['trace']}/{r['slo_preset']}"
            checks.append(f"| {name} | {c['deployment']} | {c['predicted_goodput_scale']:.3f} "
                          f"| {c['simulated_goodput_scale']:.3f} "
                          f"| {'-' if ratio is None else f'{ratio:.2f}'} | {binds} |")
    head = ("| model | GPUs | trace | SLO | " + " | ".join(PLANNERS)
            + " | over colocated | oserve+disagg plan | dynamo plan |")
    lines = [head, "|---" * (7 + len(PLANNERS)) + "|", *rows]
    lines += ["", "| oserve+disagg over | n | mean | geomean | best | worst |", "|---|---|---|---|---|---|"]
    summary: dict = {}
    for b, xs in ratios.items():
        if xs:
            a = np.asarray(xs)
            s = summary[b] = {"n": len(a), "mean": float(a.mean()),
                              "geomean": float(np.exp(np.log(a).mean())),
                              "best": float(a.max()), "worst": float(a.min())}
            lines.append(f"| {b} | {s['n']} | {s['mean']:.3f} | {s['geomean']:.3f} | {s['best']:.3f} "
                         f"| {s['worst']:.3f} |")
    summary["tight_over_colocated"] = tight_over_colocated
    lines += ["", "Model check (verification window; min TTFT-ok / TPOT-ok share over types at the simulated "
              "goodput):", "", "| scenario | candidate | predicted | simulated | predicted/simulated "
              "| TTFT / TPOT ok |", "|---|---|---|---|---|---|", *checks]
    (results_dir.parent / f"{results_dir.name}_summary.json").write_text(json.dumps(summary, indent=2))
    text = "\n".join(lines)
    (results_dir.parent / f"{results_dir.name}_summary.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="MODEL:GPUS:TRACE:SLO, comma-separated")
    ap.add_argument("--window", type=float, default=600.0, help="seconds of each trace (0: all)")
    ap.add_argument("--verify-requests", type=int, default=1000)
    ap.add_argument("--out", default="bench/results/disagg")
    ap.add_argument("--report", action="store_true", help="only aggregate the results in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.report:
        out.mkdir(parents=True, exist_ok=True)
        config = SimConfig(drain_s=300.0)
        for spec in args.scenarios.split(","):
            model, gpus, trace, slo = spec.split(":")
            path = out / f"{model}_{gpus}_{trace}_{slo}.json"
            if path.exists():
                continue
            res = run_scenario(model, int(gpus), trace, slo, args.window, args.verify_requests, config)
            path.write_text(json.dumps(res, indent=2))
            g = {n: round(p["goodput_scale"], 3) for n, p in res["planners"].items()}
            print(f"{path.name}: {g} ({res['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
