"""Aggregate bench/results/spatial/*.json into the evaluation's tables (CSV, Markdown) and plots."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

BASELINES = ("default", "homogeneous")
HERE = Path(__file__).parent


def load(results_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(results_dir.glob("*.json")):
        rows.append(json.loads(path.read_text()))
    order = {"llama-2-70b": 0, "opt-66b": 1, "llama-30b": 2, "opt-30b": 3}
    traces = {"azure-conv": 0, "azure-code": 1, "azure-mix": 2}
    return sorted(rows, key=lambda d: (order.get(d["model"], 9), d["num_gpus"], traces.get(d["trace"], 9)))


def _p99_at(d: dict, planner: str, fraction: float) -> float | None:
    for f, point in zip(d["curve_fractions"], d["curves"][planner]):
        if abs(f - fraction) < 1e-9:
            return point["p99_e2e_s"] if point["dropped"] == 0 else math.inf
    return None


def _ratio(a, b):
    if a is None or b is None or b == 0 or math.isinf(b):
        return None
    return a / b


def scenario_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for d in runs:
        if "error" in d:
            rows.append({"model": d["model"], "gpus": d["num_gpus"], "trace": d["trace"],
                         "error": d["error"]})
            continue
        row = {"model": d["model"], "gpus": d["num_gpus"], "trace": d["trace"],
               "bound_s": d["p99_bound_s"], "base_rps": d["base_rate_rps"]}
        for p in ("oserve",) + BASELINES:
            row[f"{p}_deployment"] = d["plans"][p]["deployment"]
            row[f"{p}_planned_scale"] = d["plans"][p]["demand_scale"]
            row[f"{p}_sustained_scale"] = d["max_sustainable"][p]["best_scale"]
            row[f"{p}_sustained_rps"] = d["max_sustainable"][p]["best_scale"] * d["base_rate_rps"]
            for f in (0.7, 1.0):
                row[f"{p}_p99_at_{f:g}"] = _p99_at(d, p, f)
        for b in BASELINES:
            row[f"rate_ratio_vs_{b}"] = _ratio(row["oserve_sustained_scale"], row[f"{b}_sustained_scale"])
            for f in (0.7, 1.0):
                row[f"p99_ratio_vs_{b}_at_{f:g}"] = _ratio(row[f"{b}_p99_at_{f:g}"],
                                                           row[f"oserve_p99_at_{f:g}"])
        rows.append(row)
    return rows


def aggregate(rows: list[dict]) -> dict:
    out = {}
    keys = [k for k in rows[0] if "ratio" in k] if rows else []
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None and not math.isinf(r[k])]
        if vals:
            out[k] = {"n": len(vals), "mean": sum(vals) / len(vals),
                      "geomean": math.exp(sum(math.log(v) for v in vals) / len(vals)),
                      "best": max(vals), "worst": min(vals),
                      "wins": sum(v > 1.02 for v in vals), "ties": sum(abs(v - 1) <= 0.02 for v in vals),
                      "losses": sum(v < 0.98 for v in vals)}
    return out


def _fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(rows: list[dict], agg: dict) -> str:
    lines = ["| model | GPUs | trace | oserve deployment | default | homogeneous | sustained req/s o / d / h "
             "| rate ratio vs d | vs h | P99@ref s o / d / h | P99 ratio vs d | vs h |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['gpus']} | {r['trace']} | error: {r['error'][:60]} |"
                         + " |" * 8)
            continue
        lines.append(
            f"| {r['model']} | {r['gpus']} | {r['trace']} | {r['oserve_deployment']} | "
            f"{r['default_deployment']} | {r['homogeneous_deployment']} | "
            f"{_fmt(r['oserve_sustained_rps'], 1)} / {_fmt(r['default_sustained_rps'], 1)} / "
            f"{_fmt(r['homogeneous_sustained_rps'], 1)} | {_fmt(r['rate_ratio_vs_default'])} | "
            f"{_fmt(r['rate_ratio_vs_homogeneous'])} | {_fmt(r['oserve_p99_at_1'], 1)} / "
            f"{_fmt(r['default_p99_at_1'], 1)} / {_fmt(r['homogeneous_p99_at_1'], 1)} | "
            f"{_fmt(r['p99_ratio_vs_default_at_1'])} | {_fmt(r['p99_ratio_vs_homogeneous_at_1'])} |")
    lines += ["", "| ratio (oserve over baseline; > 1 = oserve better) | n | mean | geomean | best | worst "
                  "| wins / ties / losses (2%) |", "|---|---|---|---|---|---|---|"]
    for k, a in agg.items():
        lines.append(f"| {k} | {a['n']} | {a['mean']:.3f} | {a['geomean']:.3f} | {a['best']:.3f} | "
                     f"{a['worst']:.3f} | {a['wins']} / {a['ties']} / {a['losses']} |")
    return "\n".join(lines)


def plots(runs: list[dict], out: Path, name: str = "spatial") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(d["model"] for d in runs))
    for model in models:
        mine = [d for d in runs if d["model"] == model and "error" not in d]
        if not mine:
            continue
        gpus = sorted({d["num_gpus"] for d in mine})
        traces = list(dict.fromkeys(d["trace"] for d in mine))
        fig, axes = plt.subplots(len(gpus), len(traces), figsize=(4.2 * len(traces), 3.2 * len(gpus)),
                                 squeeze=False)
        for d in mine:
            ax = axes[gpus.index(d["num_gpus"])][traces.index(d["trace"])]
            for p, style in (("oserve", "-o"), ("homogeneous", "--s"), ("default", ":^")):
                pts = [(c["offered_rps"], c["p99_e2e_s"]) for c in d["curves"][p]
                       if c["dropped"] == 0 and c["p99_e2e_s"] is not None]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{p}: {d['plans'][p]['deployment']}", markersize=4)
            ax.axhline(d["p99_bound_s"], color="grey", linewidth=0.8)
            ax.set_title(f"{d['num_gpus']} GPUs, {d['trace']}", fontsize=9)
            ax.set_xlabel("offered load (req/s)", fontsize=8)
            ax.set_ylabel("P99 e2e (s)", fontsize=8)
            ax.legend(fontsize=5.5)
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{model}: P99 end-to-end latency vs offered load (grey: bound)")
        fig.tight_layout()
        fig.savefig(out / f"{name}_p99_vs_rate_{model}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=str(HERE / "results" / "spatial"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="spatial", help="prefix of the output files")
    args = ap.parse_args(argv)
    runs = load(Path(args.results))
    rows = scenario_rows(runs)
    ok = [r for r in rows if "error" not in r]
    agg = aggregate(ok)
    out = Path(args.out)
    with (out / f"{args.name}_summary.csv").open("w", newline="") as fh:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary = {"scenarios": rows, "aggregate": agg}
    (out / f"{args.name}_summary.json").write_text(json.dumps(summary, indent=1))
    (out / f"{args.name}_summary.md").write_text(markdown(rows, agg) + "\n")
    plots(runs, out, args.name)
    print(markdown(rows, agg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
