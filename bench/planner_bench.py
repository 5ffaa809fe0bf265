"""Planner benchmark: time and quality of the planners over cluster sizes, models and traces.

Writes bench/results/planner_bench.{csv,md,png}. Quality is the demand scale a plan carries (max uniform
multiple of the trace's per-type rates); gaps are relative to the best plan found for the same case
(exhaustive where it runs, otherwise the exact MILP).

    python bench/planner_bench.py [--sizes 8,16,32,64,128,256] [--out bench/results]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import time
from pathlib import Path

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.planner.api import make_plan
from oserve.planner.search import SearchParams
from oserve.workload import fit_request_types, load_trace

EXHAUSTIVE_MAX_GPUS = 16


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="8,16,32,64,128,256")
    ap.add_argument("--models", default="llama-2-70b,opt-66b")
    ap.add_argument("--traces", default="azure-conv,azure-code,azure-mix")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for trace_name in args.traces.split(","):
        full = load_trace(trace_name)
        for model_name in args.models.split(","):
            model = load_models().get(model_name)
            # plan on the trace as `oserve plan` and the simulator see it: clipped to the model's context
            trace, _ = full.clipped_to_context(model.max_context_tokens)
            stats = fit_request_types(trace, 4, 0).stats(trace)
            for n in (int(s) for s in args.sizes.split(",")):
                cluster = parse_cluster(f"{n // 8}x8xH100")
                # "oserve" here is the raw search (no preference for homogeneous fleets), so its gap
                # measures the search itself; "oserve-5%" is what `oserve plan` returns by default.
                planners = ["oserve", "oserve-5%", "milp", "homogeneous", "default"]
                if n <= EXHAUSTIVE_MAX_GPUS:
                    planners.append("exhaustive")
                results = {}
                for p in planners:
                    t0 = time.perf_counter()
                    if p == "oserve":
                        plan = make_plan(cluster, model, stats, p,
                                         search=SearchParams(min_gain_over_homogeneous=0.0))
                    elif p == "oserve-5%":
                        plan = make_plan(cluster, model, stats, "oserve")
                    else:
                        plan = make_plan(cluster, model, stats, p)
                    results[p] = (time.perf_counter() - t0, plan)
                best = results["exhaustive" if "exhaustive" in results else "milp"][1].demand_scale
                for p, (secs, plan) in results.items():
                    rows.append({"trace": trace_name, "model": model_name, "gpus": n, "planner": p,
                                 "seconds": round(secs, 3), "demand_scale": round(plan.demand_scale, 4),
                                 "gap_vs_best": round(1 - plan.demand_scale / best, 5),
                                 "deployment": plan.describe()})
                    print(rows[-1], flush=True)
    with open(out / "planner_bench.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _markdown(rows, out / "planner_bench.md")
    _plot(rows, out / "planner_bench.png")


def _markdown(rows, path: Path) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Measured {stamp} on {platform.node()} ({platform.processor() or platform.machine()}, "
             f"2 cores), Python {platform.python_version()}.", "",
             "| trace | model | GPUs | oserve s | oserve gap | milp s | exhaustive s | homogeneous gap "
             "| default gap | search's deployment | `oserve plan` default (5% margin) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["trace"], r["model"], r["gpus"])  # noqa: E731
    cases = {}
    for r in rows:
        cases.setdefault(key(r), {})[r["planner"]] = r
    for (trace, model, n), c in cases.items():
        ex = c.get("exhaustive")
        lines.append(f"| {trace} | {model} | {n} | {c['oserve']['seconds']:.2f} | "
                     f"{c['oserve']['gap_vs_best']:.2%} | {c['milp']['seconds']:.2f} | "
                     f"{ex['seconds']:.2f} | " if ex else
                     f"| {trace} | {model} | {n} | {c['oserve']['seconds']:.2f} | "
                     f"{c['oserve']['gap_vs_best']:.2%} | {c['milp']['seconds']:.2f} | - | ")
        lines[-1] += (f"{c['homogeneous']['gap_vs_best']:.2%} | {c['default']['gap_vs_best']:.2%} | "
                      f"{c['oserve']['deployment']} | {c['oserve-5%']['deployment']} |")
    path.write_text("\n".join(lines) + "\n")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for planner, style in (("oserve", "o-"), ("milp", "s--"), ("exhaustive", "^:")):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = {}
            for r in rows:
                if r["planner"] == planner and r["model"] == model:
                    pts.setdefault(r["gpus"], []).append(r)
            xs = sorted(pts)
            axes[0].plot(xs, [max(p["seconds"] for p in pts[x]) for x in xs], style,
                         label=f"{planner} {model}")
            axes[1].plot(xs, [max(p["gap_vs_best"] for p in pts[x]) * 100 for x in xs], style,
                         label=f"{planner} {model}")
    axes[0].set(xscale="log", yscale="log", xlabel="GPUs (H100)", ylabel="planner time, worst trace (s)")
    axes[1].set(xscale="log", xlabel="GPUs (H100)", ylabel="gap to best plan, worst trace (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
