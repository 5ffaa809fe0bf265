"""Dispatch ablation for the spatial evaluation: does leaving the plan under bursts rescue its losses?

For every scenario in bench/results/spatial where OServe's deployment differs from `homogeneous`, replays
OServe's plan at the reference rate (where `homogeneous` just meets the P99 bound) with each dispatch
policy, and `homogeneous` with the default policy. Writes bench/results/spatial_dispatch_ablation.json/.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.planner.plan import Plan
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace, simulate_at

HERE = Path(__file__).parent
POLICIES = ("least-outstanding", "spillover", "round-robin")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spatial", default=str(HERE / "results" / "spatial"),
                    help="directory of spatial_eval.py results")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    rows = []
    for path in sorted(Path(args.spatial).glob("*.json")):
        d = json.loads(path.read_text())
        if "error" in d or d["plans"]["oserve"]["deployment"] == d["plans"]["homogeneous"]["deployment"]:
            continue
        cost = CostModel(load_models().get(d["model"]))
        prepared = prepare_trace(d["trace"], cost, 4, d["sim_config"]["seed"], (0.0, d["window_s"]))
        scale = d["reference_scale"]
        row = {"model": d["model"], "gpus": d["num_gpus"], "trace": d["trace"], "scale": scale,
               "oserve": d["plans"]["oserve"]["deployment"],
               "homogeneous": d["plans"]["homogeneous"]["deployment"]}
        homog = Plan.from_dict(d["plans"]["homogeneous"])
        homog_summary = simulate_at(homog, prepared, cost, SimConfig(), scale).summary()
        row["homogeneous_p99_e2e_s"] = homog_summary["p99_e2e_s"]
        plan = Plan.from_dict(d["plans"]["oserve"])
        for policy in POLICIES:
            m = simulate_at(plan, prepared, cost, SimConfig(dispatch=policy), scale).summary()
            row[f"oserve_{policy}_p99_e2e_s"] = m["p99_e2e_s"]
            row[f"oserve_{policy}_p99_ttft_s"] = m["p99_ttft_s"]
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    out = Path(args.out)
    (out / "spatial_dispatch_ablation.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | GPUs | trace | homogeneous P99 e2e | oserve " + " | oserve ".join(POLICIES) + " |",
             "|---|---|---|---|" + "---|" * len(POLICIES)]
    for r in rows:
        cells = " | ".join(f"{r[f'oserve_{p}_p99_e2e_s']:.1f}" for p in POLICIES)
        lines.append(f"| {r['model']} | {r['gpus']} | {r['trace']} | {r['homogeneous_p99_e2e_s']:.1f} | "
                     f"{cells} |")
    (out / "spatial_dispatch_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
