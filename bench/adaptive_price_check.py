"""Does the switching price see the gain? On the code phase of the REAL-DRIFT conv->code scenario of
``adaptive_bench.py`` (Llama-2-70B, 2x8 H100, loose SLO), each fleet's SLO goodput as the latency model
predicts it (the loop's price: the trace's SLO workload, rates of the code phase) beside the simulated
one (goodput search on the code phase alone, 20 minutes at its real arrival process).

Fleets: the plan the loop starts from at scale 1 (made from the first 2 minutes), the SLO planner's
shortlist for the code phase's rates, and the fleet a vLLM user deploys by default. Writes
``bench/results/adaptive_price_check.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan
from oserve.sim.adaptive_experiment import attainment_of, slo_of, static_plan
from oserve.sim.api import simulate_plan
from oserve.sim.experiment import PreparedTrace
from oserve.sim.goodput import search_goodput_scale
from oserve.switching.goodput_price import forecast_workload
from oserve.switching.policy import forecast_types
from oserve.workload.drift import replay_at_rate

sys.path.insert(0, str(Path(__file__).parent))
import adaptive_bench  # noqa: E402

CODE_PHASE_S = (1200.0, 2400.0)


def main() -> int:
    setup = adaptive_bench._setup("convcode70")
    p = setup.prepared
    code = p.trace.window(*CODE_PHASE_S)
    rates = np.array([t.count / (CODE_PHASE_S[1] - CODE_PHASE_S[0]) for t in p.types.stats(code)])
    types = forecast_types(p.stats, rates)
    gp = GoodputPlanner(setup.cluster, setup.cost, types, forecast_workload(slo_of(setup), types))
    fleets = {"loop's initial plan (scale 1)": static_plan(setup, "initial")}
    for c in gp.shortlist(3):
        fleets.setdefault(f"{c.kind}", candidate_plan(c, setup.cost, types, "goodput", c.kind, 0.0))
    out = []
    for name, plan in fleets.items():
        fractions = np.asarray(plan.dispatch, dtype=float)
        predicted = gp.predicted_scale(plan.replicas, fractions)

        def evaluate(scale: float, plan=plan):
            trace = code if scale == 1.0 else replay_at_rate(code, scale, seed=0)
            res = simulate_plan(plan, trace, p.types, setup.cost, setup.sim_config)
            scaled = replace(setup, prepared=PreparedTrace(trace, p.types, p.types.stats(trace), 0))
            return attainment_of(scaled, res), res

        simulated = search_goodput_scale(evaluate, setup.slo.attainment, 1.0, 0.05, max_probes=6).scale
        out.append({"fleet": name, "deployment": plan.describe(), "predicted_goodput_scale": predicted,
                    "simulated_goodput_scale": simulated})
        print(f"{name}: {plan.describe()} predicted {predicted:.3f} simulated {simulated:.3f}", flush=True)
    res_dir = Path(__file__).parent / "results"
    doc = {"scenario": "convcode70 code phase", "window_s": CODE_PHASE_S, "rates_rps": rates.tolist(),
           "git_revision": git_revision(), "fleets": out}
    (res_dir / "adaptive_price_check.json").write_text(json.dumps(doc, indent=1))
    lines = ["| fleet | deployment | predicted goodput (latency model) | simulated goodput |",
             "|---|---|---:|---:|"]
    lines += [f"| {f['fleet']} | {f['deployment']} | {f['predicted_goodput_scale']:.3f} | "
              f"{f['simulated_goodput_scale']:.3f} |" for f in out]
    (res_dir / "adaptive_price_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
