"""SLO goodput evaluation: `oserve` against `default`, `homogeneous` and `homogeneous-tuned` (simulated).

For each (model, cluster size, trace, SLO preset) scenario this script plans with every planner (the
goodput planners with the latency model; `oserve` also with the simulator verifying its shortlist), then
searches each plan's **SLO goodput scale** on the trace window: the highest rate scale at which every
request type has at least 90% of its requests within TTFT and TPOT bounds (bisection to 3%,
`oserve.sim.goodput`). It records per planner: the goodput scale, planner time, per-type attainment and
P99 TTFT/TPOT/e2e at that scale, the attainment probes (attainment against offered load), and the latency
model's predicted per-type attainment at the same scale (to measure the model against the simulator).

Every plan is simulated with the same router, ``--dispatch`` (default ``slo-spill``: least outstanding
within the plan plus the SLO spill rule, ``planner.spill_rule``), in the shortlist's verification and in
the goodput search, so heterogeneous plans are judged with spilling on.

One JSON per scenario goes to --out (default bench/results/slo_goodput); existing files are skipped, so a
run can be resumed or split. ``--report`` aggregates them into ``<out>_summary.md`` / ``.json`` with the
ratios (oserve over each baseline, side by side in one run) and ``<out>_attainment.png``.
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
from oserve.costmodel.slo_capacity import fleet_attainment
from oserve.planner.slo_planner import GoodputPlanner, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.metrics import per_type_latency, slo_attainment
from oserve.sim.verify import plan_with_slo
from oserve.workload.slo import slo_from_flags

MODELS = ("llama-2-70b", "llama-30b", "opt-66b", "llama-3.1-70b")
GPUS = (8, 16, 32)
TRACES = ("azure-conv", "azure-code", "azure-mix")
SLOS = ("loose", "tight")
PLANNERS = ("oserve", "homogeneous-tuned", "homogeneous", "default")


def run_scenario(model: str, num_gpus: int, trace: str, slo_name: str, window_s: float,
                 verify_requests: int, config: SimConfig) -> dict:
    t0 = time.perf_counter()
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(f"{num_gpus // 8}x8xH100-80GB")
    prepared = prepare_trace(trace, cost, 4, config.seed, (0.0, window_s) if window_s else None)
    slo = slo_from_flags(slo_name, None, None, None)
    workload = slo_workload(prepared.trace, prepared.types, prepared.stats, slo)
    gp = GoodputPlanner(cluster, cost, prepared.stats, workload)
    k = prepared.types.k
    out = {"model": model, "num_gpus": num_gpus, "cluster": cluster.describe(), "trace": trace,
           "slo": slo.describe(), "window_s": window_s, "requests": len(prepared.trace),
           "requests_shortened_to_context": prepared.num_clipped, "types": prepared.types.names(),
           "verify_requests": verify_requests, "dispatch": config.dispatch, "planners": {}}
    done: dict[str, dict] = {}
    for name in PLANNERS:
        plan, ver = plan_with_slo(cluster, cost, prepared, name, slo, "goodput", config,
                                  verify_requests=verify_requests)
        key = json.dumps([plan.to_dict()["replicas"], plan.dispatch])
        if key not in done:
            res = plan_goodput(plan, prepared, cost, config, slo,
                               start_scale=max(plan.predicted_goodput_scale or 1.0, 1e-3))
            entry = {"goodput_scale": res.scale,
                     "probes": [{"scale": p.scale, "offered_rps": p.scale * prepared.trace.mean_rate_rps,
                                 "overall": p.attainment.overall, "per_type": list(p.attainment.per_type),
                                 "ok": p.ok} for p in res.probes]}
            if res.best is not None:
                names = prepared.types.names()
                ttft, tpot = slo.bounds(res.best.type_id, names, res.best.input_tokens)
                att = slo_attainment(res.best, ttft, tpot, k)
                models = [gp.model(r.config) for r in plan.replicas]
                pred = fleet_attainment(models, np.asarray(plan.dispatch), workload, res.scale)
                entry.update(simulated_attainment=list(att.per_type), predicted_attainment=list(pred),
                             per_type_p99=per_type_latency(res.best, k),
                             dropped=int((~res.best.completed).sum()))
            done[key] = entry
        out["planners"][name] = {**done[key], "deployment": plan.describe(),
                                 "predicted_goodput_scale": plan.predicted_goodput_scale,
                                 "planner_seconds": plan.planner_seconds,
                                 "verification": ver.to_dict() if ver else None}
    out["seconds"] = time.perf_counter() - t0
    out["git_revision"] = git_revision()
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def report(results_dir: Path) -> str:
    rows, ratios = [], {b: [] for b in PLANNERS[1:]}
    model_err = []
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        p = r["planners"]
        g = {n: p[n]["goodput_scale"] for n in PLANNERS}
        for b in PLANNERS[1:]:
            x = _ratio(g["oserve"], g[b])
            if x is not None:
                ratios[b].append(x)
        for n in PLANNERS:
            sim, pred = p[n].get("simulated_attainment"), p[n].get("predicted_attainment")
            if sim and pred:
                model_err += [q - s for s, q in zip(sim, pred) if s is not None]
        rows.append(f"| {r['model']} | {r['num_gpus']} | {r['trace']} | {path.stem.rsplit('_', 1)[-1]} "
                    f"| " + " | ".join(f"{g[n]:.3f}" for n in PLANNERS)
                    + f" | {p['oserve']['deployment']} | {p['homogeneous-tuned']['deployment']} "
                      f"| {p['oserve']['planner_seconds']:.1f} |")
    head = ("| model | GPUs | trace | SLO | oserve | homogeneous-tuned | homogeneous | default | oserve plan "
            "| homogeneous-tuned plan | oserve planner s |")
    lines = [head, "|---" * 11 + "|", *rows]
    lines += ["", "| oserve over | n | mean | geomean | best | worst |", "|---|---|---|---|---|---|"]
    summary = {}
    for b, xs in ratios.items():
        if xs:
            a = np.asarray(xs)
            summary[b] = {"n": len(a), "mean": float(a.mean()), "geomean": float(np.exp(np.log(a).mean())),
                          "best": float(a.max()), "worst": float(a.min())}
            s = summary[b]
            lines.append(f"| {b} | {s['n']} | {s['mean']:.3f} | {s['geomean']:.3f} | {s['best']:.3f} "
                         f"| {s['worst']:.3f} |")
    if model_err:
        signed = np.asarray(model_err)
        e = np.abs(signed)
        summary["model_error_attainment"] = {"n": len(e), "abs_median": float(np.median(e)),
                                             "abs_p90": float(np.percentile(e, 90)),
                                             "mean_signed": float(signed.mean())}
        lines += ["", f"Latency model vs simulator, per-type attainment at the simulated goodput scale: "
                      f"|predicted - simulated| median {np.median(e):.3f}, p90 {np.percentile(e, 90):.3f}, "
                      f"mean signed {signed.mean():+.3f} over {len(e)} (plan, type) pairs."]
    lines += ["", *_per_type_table(results_dir)]
    (results_dir.parent / f"{results_dir.name}_summary.json").write_text(json.dumps(summary, indent=2))
    text = "\n".join(lines)
    (results_dir.parent / f"{results_dir.name}_summary.md").write_text(text + "\n")
    _plot(results_dir)
    return text


def _per_type_table(results_dir: Path) -> list[str]:
    """Per scenario, planner and type: P99 TTFT / TPOT / e2e (s) at the planner's goodput scale."""
    lines = ["Per-type P99 TTFT / TPOT / e2e in seconds at each planner's goodput scale:", "",
             "| scenario | type | " + " | ".join(PLANNERS) + " |", "|---" * (2 + len(PLANNERS)) + "|"]
    for path in sorted(results_dir.glob("*.json")):
        r = json.loads(path.read_text())
        p = r["planners"]
        for t, name in enumerate(r["types"]):
            cells = []
            for n in PLANNERS:
                lat = p[n].get("per_type_p99")
                x = lat[t] if lat else None
                cells.append("-" if not x or x["p99_ttft_s"] is None else
                             f"{x['p99_ttft_s']:.2f} / {x['p99_tpot_s']:.3f} / {x['p99_e2e_s']:.1f}")
            lines.append(f"| {path.stem} | {name} | " + " | ".join(cells) + " |")
    return lines


def _plot(results_dir: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return
    files = sorted(results_dir.glob("*.json"))
    if not files:
        return
    cols = min(3, len(files))
    rows = -(-len(files) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, path in zip(axes.flat, files):
        r = json.loads(path.read_text())
        for name, p in r["planners"].items():
            pts = sorted((q["offered_rps"], q["overall"]) for q in p["probes"])
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{r['model']} {r['num_gpus']} GPUs {r['trace']} {path.stem.rsplit('_', 1)[-1]}",
                     fontsize=9)
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel("SLO attainment (all types)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results_dir.parent / f"{results_dir.name}_attainment.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--gpus", default=",".join(str(g) for g in GPUS))
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--slos", default=",".join(SLOS))
    ap.add_argument("--window", type=float, default=1200.0, help="seconds of each trace (0: all)")
    ap.add_argument("--verify-requests", type=int, default=1000)
    ap.add_argument("--dispatch", default="slo-spill", help="the router's policy for every plan")
    ap.add_argument("--out", default="bench/results/slo_goodput")
    ap.add_argument("--report", action="store_true", help="only aggregate the results in --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.report:
        out.mkdir(parents=True, exist_ok=True)
        config = SimConfig(drain_s=300.0, dispatch=args.dispatch)
        for model in args.models.split(","):
            for gpus in (int(g) for g in args.gpus.split(",")):
                for trace in args.traces.split(","):
                    for slo in args.slos.split(","):
                        path = out / f"{model}_{gpus}_{trace}_{slo}.json"
                        if path.exists():
                            continue
                        res = run_scenario(model, gpus, trace, slo, args.window, args.verify_requests,
                                           config)
                        path.write_text(json.dumps(res, indent=2))
                        g = {n: round(p["goodput_scale"], 3) for n, p in res["planners"].items()}
                        print(f"{path.name}: {g} ({res['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
