"""Plans before and after the pipeline-bubble model, all simulated with the current simulator.

Inputs: two result directories of ``bench/slo_goodput_eval.py``, one run on the code before the
``costmodel.pipeline`` model (``--before``) and one after (``--after``), same scenarios. Before, the cost
model and the simulator split every PP step evenly over the stages, so the plans favoured deep PP and
their simulated goodput was measured with the same optimistic physics. This re-simulates each *before*
plan of ``oserve`` and ``homogeneous-tuned`` (homogeneous fleets, parsed from the deployment) with the
current simulator, on the same trace window and search (``sim.goodput``, bisection to 3%), beside the
after plans' goodput. Writes bench/results/pp_before_after.{json,md}.

    python bench/pp_before_after.py --before DIR --after DIR [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan, slo_workload
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.workload.slo import slo_from_flags

FLEET = re.compile(r"^(\d+)x\[(\S+) TP(\d+)(?: PP(\d+))?(?: \((\d+) tok\))?\]$")


def fleet_config(deployment: str) -> tuple[int, ReplicaConfig]:
    m = FLEET.match(deployment)
    if m is None:
        raise SystemExit(f"not a homogeneous fleet: {deployment!r}")
    n, gpu, tp, pp, tok = m.groups()
    return int(n), ReplicaConfig(gpu, int(tp), int(pp or 1), max_num_batched_tokens=int(tok or 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    rows = []
    config = SimConfig(drain_s=300.0)  # as slo_goodput_eval
    for path in sorted(Path(args.after).glob("*.json")):
        after = json.loads(path.read_text())
        before = json.loads((Path(args.before) / path.name).read_text())
        cost = CostModel(load_models().get(after["model"]))
        cluster = parse_cluster(f"{after['num_gpus'] // 8}x8xH100-80GB")
        window = after["window_s"]
        prepared = prepare_trace(after["trace"], cost, 4, config.seed, (0.0, window) if window else None)
        slo = slo_from_flags(path.stem.rsplit("_", 1)[-1], None, None, None)
        gp = GoodputPlanner(cluster, cost, prepared.stats,
                            slo_workload(prepared.trace, prepared.types, prepared.stats, slo))
        for name in ("oserve", "homogeneous-tuned"):
            old = before["planners"][name]
            n, cfg = fleet_config(old["deployment"])
            cand = gp._replicated(cfg, name, n)
            if cand is None:
                raise SystemExit(f"{old['deployment']} does not fit {cluster.describe()}")
            plan = candidate_plan(cand, cost, prepared.stats, "goodput", name, 0.0)
            res = plan_goodput(plan, prepared, cost, config, slo, start_scale=max(cand.predicted_scale, 1e-3))
            new = after["planners"][name]
            rows.append({"scenario": path.stem, "planner": name,
                         "before_plan": old["deployment"], "before_sim_old_physics": old["goodput_scale"],
                         "before_predicted_new_model": cand.predicted_scale,
                         "before_sim_new_physics": res.scale,
                         "after_plan": new["deployment"], "after_predicted": new["predicted_goodput_scale"],
                         "after_sim": new["goodput_scale"],
                         "gain": new["goodput_scale"] / res.scale if res.scale > 0 else None})
            print(json.dumps(rows[-1]), flush=True)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pp_before_after.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Plans before and after the pipeline-bubble model (goodput scale, simulated)", "",
             "| scenario | planner | plan before | simulated, old physics | simulated, new physics | "
             "plan after | simulated (new) | after / before (new physics) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gain = f"{r['gain']:.2f}x" if r["gain"] else "-"
        lines.append(f"| {r['scenario']} | {r['planner']} | {r['before_plan']} | "
                     f"{r['before_sim_old_physics']:.3f} | {r['before_sim_new_physics']:.3f} | "
                     f"{r['after_plan']} | {r['after_sim']:.3f} | {gain} |")
    (dest / "pp_before_after.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
