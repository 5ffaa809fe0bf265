"""Combine the per-scenario JSONs of several ``bench/slo_goodput_eval.py`` output folders into one summary.

Per (GPU count, trace) and overall: `oserve`'s SLO goodput over each baseline (mean, geomean, best, worst;
each ratio side by side in one scenario's run), the scenarios below 0.98x `homogeneous-tuned`, how often the
verification's winner was re-checked on the larger window (``sim.verify.confirm``) and the verdicts, and
`oserve`'s planner wall time. Writes ``<out>.md`` and ``<out>.json``.

    python bench/slo_goodput_combined.py bench/results/slo_goodput_confirm8 \\
        bench/results/slo_goodput_confirm bench/results/slo_goodput_confirm32 \\
        --out bench/results/slo_goodput_confirm_all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BASELINES = ("default", "homogeneous", "homogeneous-tuned")


def stats(xs: list[float]) -> dict:
    a = np.asarray(xs, dtype=float)
    return {"n": len(a), "mean": float(a.mean()), "geomean": float(np.exp(np.log(a).mean())),
            "best": float(a.max()), "worst": float(a.min())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = []
    for d in args.dirs:
        for path in sorted(Path(d).glob("*.json")):
            r = json.loads(path.read_text())
            p = r["planners"]
            g = {n: p[n]["goodput_scale"] for n in p}
            ver = p["oserve"].get("verification") or {}
            conf = ver.get("confirmation")
            rows.append({"scenario": path.stem, "gpus": r["num_gpus"], "trace": r["trace"],
                         "ratios": {b: g["oserve"] / g[b] for b in BASELINES if g[b] > 0},
                         "goodput": g, "oserve_plan": p["oserve"]["deployment"],
                         "tuned_plan": p["homogeneous-tuned"]["deployment"],
                         "planner_s": p["oserve"]["planner_seconds"],
                         "confirmation": conf,
                         "dropped": {n: p[n].get("dropped") for n in p}})
    groups: dict[str, list[dict]] = {"all": rows}
    for r in rows:
        groups.setdefault(f"{r['gpus']} GPUs", []).append(r)
        groups.setdefault(r["trace"], []).append(r)
    summary = {k: {b: stats([r["ratios"][b] for r in rs if b in r["ratios"]]) for b in BASELINES}
               for k, rs in groups.items()}
    below = [(r["scenario"], r["ratios"]["homogeneous-tuned"]) for r in rows
             if r["ratios"].get("homogeneous-tuned", 1.0) < 0.98]
    confs = [r for r in rows if r["confirmation"]]
    planner_s = [r["planner_s"] for r in rows]
    result = {"dirs": args.dirs, "scenarios": len(rows), "summary": summary, "below_0.98_tuned": below,
              "confirmations": {"triggered": len(confs),
                                "confirmed": sum(bool(r["confirmation"]["confirmed"]) for r in confs),
                                "rejected": [r["scenario"] for r in confs
                                             if not r["confirmation"]["confirmed"]]},
              "planner_wall_s": {"median": float(np.median(planner_s)), "max": float(np.max(planner_s))},
              "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# SLO goodput, {len(rows)} scenarios ({', '.join(args.dirs)})", "",
             "| group | oserve over | n | mean | geomean | best | worst |", "|---|---|---|---|---|---|---|"]
    for k, per in summary.items():
        for b, s in per.items():
            lines.append(f"| {k} | {b} | {s['n']} | {s['mean']:.3f} | {s['geomean']:.3f} | {s['best']:.3f} "
                         f"| {s['worst']:.3f} |")
    c = result["confirmations"]
    lines += ["", f"Below 0.98x homogeneous-tuned: {below or 'none'}.",
              f"Winner re-checked on the larger window in {c['triggered']} scenarios: "
              f"{c['confirmed']} confirmed, rejected in {c['rejected'] or 'none'}.",
              f"oserve planner wall time: median {result['planner_wall_s']['median']:.1f} s, "
              f"max {result['planner_wall_s']['max']:.1f} s (shared machine).", "",
              "| scenario | oserve | homogeneous-tuned | homogeneous | default | vs tuned | oserve plan "
              "| re-check |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, cf = r["goodput"], r["confirmation"]
        chk = "-" if not cf else (f"{'confirmed' if cf['confirmed'] else 'rejected'} ({cf['probes']} probes, "
                                  f"{cf['requests']} req.)")
        lines.append(f"| {r['scenario']} | {g['oserve']:.3f} | {g['homogeneous-tuned']:.3f} | "
                     f"{g['homogeneous']:.3f} | {g['default']:.3f} "
                     f"| {r['ratios'].get('homogeneous-tuned', 0):.3f} | {r['oserve_plan']} | {chk} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
