"""Is there drift on the conv->code trace that a deployment could exploit? For the REAL-DRIFT scenario
``convcode70`` of ``adaptive_bench.py`` (Llama-2-70B, 2x8 H100, loose SLO, 90% of every type): how the
two phases differ (type mix, lengths, rates), which fleets the SLO planner makes for each phase alone,
and how each of them does on each phase, simulated and as the switching price predicts it.

* Phases: conversation [0, 1200) s and code [1200, 2400) s of the trace replayed at each rate scale by
  ``replay_at_rate`` with the bench's seed; the scales are the probes of the bench's static goodput
  searches (``--probes``), so the requests are those of the evaluation's probes.
* Fleets: the bench's ``static-initial`` plan (from the first 2 minutes of each replay) and hindsight plan
  at every probe scale, and, at ``--plan-scale`` (default the ``static-initial`` goodput), per phase the
  SLO planner's shortlist planned on that phase alone (its own length samples and burstiness) and the
  loop's shortlist at that phase's mean rates (the whole trace's SLO workload, what ``decide`` plans
  with); one entry per distinct deployment.
* Each fleet on each phase: dispatched by the SLO dispatch LP for that phase's rates (what the loop's
  hold does, at no cost), simulated at fixed rate scales (``--scales``, paired: every fleet sees the
  same replays), per-type attainment; a phase's goodput = the highest scale at which every type passes.
  ``predicted`` = the latency model's goodput scale for that phase's rates under the loop's SLO workload
  (the whole trace's per-type length samples and burstiness: what the policy prices with) and under the
  phase's own (its own samples and burstiness), relative to the trace's rate.
* The oracle switcher: on each phase the fleet that simulates best there, at no switch cost, pooled per
  type over the two phases (the whole trace's attainment): an upper bound on what switching can reach.

Writes ``bench/results/convcode_phases.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.planner.plan import Plan
from oserve.planner.slo_planner import Candidate, GoodputPlanner, candidate_plan, plan_for_slo
from oserve.sim.adaptive_experiment import AdaptiveSetup, attainment_of, rate_replayed, slo_of, static_plan
from oserve.sim.api import simulate_plan
from oserve.sim.experiment import PreparedTrace
from oserve.switching.goodput_price import GoodputPricer, forecast_workload
from oserve.switching.policy import forecast_types

sys.path.insert(0, str(Path(__file__).parent))
import adaptive_bench  # noqa: E402

PHASES = {"conv": (0.0, 1200.0), "code": (1200.0, 2400.0)}
STATIC_PROBES = Path(__file__).parent / "results" / "adaptive" / "convcode70.json"
REVISION_AT_START = git_revision()


def _phase(setup: AdaptiveSetup, name: str) -> AdaptiveSetup:
    p = setup.prepared
    trace = p.trace.window(*PHASES[name])
    return replace(setup, prepared=PreparedTrace(trace, p.types, p.types.stats(trace), 0))


def _rates(setup: AdaptiveSetup, name: str) -> np.ndarray:
    start, end = PHASES[name]
    return np.array([s.count / (end - start) for s in _phase(setup, name).prepared.stats])


def describe_phase(setup: AdaptiveSetup, name: str) -> dict:
    p = _phase(setup, name).prepared
    t = p.trace
    type_id = p.types.classify_online(t.input_tokens)
    counts = np.bincount(type_id, minlength=p.types.k)
    return {"phase": name, "window_s": PHASES[name], "requests": len(t),
            "rate_rps": len(t) / (PHASES[name][1] - PHASES[name][0]),
            "input_mean": float(t.input_tokens.mean()), "input_p50": float(np.median(t.input_tokens)),
            "input_p90": float(np.percentile(t.input_tokens, 90)),
            "output_mean": float(t.output_tokens.mean()), "output_p50": float(np.median(t.output_tokens)),
            "output_p90": float(np.percentile(t.output_tokens, 90)),
            "type_mix": (counts / counts.sum()).tolist(), "type_rates_rps": _rates(setup, name).tolist(),
            "type_mean_input": [float(t.input_tokens[type_id == k].mean()) if counts[k] else None
                                for k in range(p.types.k)],
            "type_mean_output": [float(t.output_tokens[type_id == k].mean()) if counts[k] else None
                                 for k in range(p.types.k)]}


def fleets(base: AdaptiveSetup, setup: AdaptiveSetup, scales: list[float],
           aliases: dict[str, list[str]]) -> dict[str, Plan]:
    """Every distinct deployment worth asking about, by the first name it was found under: the bench's
    static plans at each probe scale (``static-initial`` plans from the first 2 minutes of each replay,
    so it changes with the scale), then the phase plans at ``setup``'s scale; the other names a deployment
    was found under go to ``aliases``."""
    found: dict[str, Plan] = {}
    for s in scales:
        scaled = rate_replayed(base, s)
        found[f"initial plan at x{s:.3f}"] = static_plan(scaled, "initial")
        found[f"hindsight plan at x{s:.3f}"] = static_plan(scaled, "oserve")
    for name in PHASES:
        ph = _phase(setup, name)
        best, shortlist = plan_for_slo(setup.cluster, setup.cost, list(ph.prepared.stats), slo_of(ph),
                                       "oserve")
        found[f"{name}-phase plan"] = best
        for i, plan in enumerate(shortlist):
            found[f"{name}-phase shortlist {i}"] = plan
        types = forecast_types(setup.prepared.stats, _rates(setup, name))
        gp = GoodputPlanner(setup.cluster, setup.cost, types, forecast_workload(slo_of(setup), types))
        for i, c in enumerate(gp.shortlist(3)):
            found[f"loop's shortlist at {name} rates {i}"] = candidate_plan(c, setup.cost, types, "goodput",
                                                                            c.kind, 0.0)
    out: dict[str, Plan] = {}
    for name, plan in found.items():
        first = next((k for k, q in out.items() if _configs(q) == _configs(plan)), None)
        if first is None:
            out[name] = plan
        else:
            aliases.setdefault(first, []).append(name)
    return out


def _configs(plan: Plan) -> list:
    return sorted(r.config for r in plan.replicas)


def on_phase(setup: AdaptiveSetup, plan: Plan, name: str) -> tuple[Plan, float, float, list[float]]:
    """``plan``'s replicas dispatched for phase ``name``'s rates, the predicted goodput scale there
    (relative to the setup's rates) under the loop's SLO workload (the whole trace's length samples and
    burstiness, the phase's rates: what ``decide`` prices with) and under the phase's own, and the
    per-type attainment the loop's workload predicts at the phase's rates."""
    types = forecast_types(setup.prepared.stats, _rates(setup, name))
    loop = forecast_workload(slo_of(setup), types)
    own = forecast_workload(slo_of(_phase(setup, name)), types)
    pricer = GoodputPricer(setup.cluster, setup.cost, loop, types, {})
    fractions = pricer.dispatch(plan.replicas)
    attainment = pricer.attainment(plan.replicas, fractions).tolist()
    predicted = [GoodputPlanner(setup.cluster, setup.cost, types, w).predicted_scale(plan.replicas,
                                                                                     fractions)
                 for w in (loop, own)]
    placed = candidate_plan(Candidate(plan.planner, plan.replicas, fractions, predicted[0]), setup.cost,
                            types, "goodput", plan.planner, 0.0)
    return placed, predicted[0], predicted[1], attainment


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--plan-scale", type=float, default=0.0,
                    help="scale the phase plans are made at (default: static-initial's goodput in --probes)")
    ap.add_argument("--scales", default="", help="rate scales (default: the probes of --probes)")
    ap.add_argument("--probes", default=str(STATIC_PROBES),
                    help="the bench's static goodput searches, whose probe scales are used (paired)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "convcode_phases"))
    args = ap.parse_args(argv)
    static = json.loads(Path(args.probes).read_text())["modes"]["static-initial"]
    scales = sorted(float(x) for x in args.scales.split(",")) if args.scales else \
        sorted(p["scale"] for p in static["probes"])
    plan_scale = args.plan_scale or static["goodput_scale"]
    base = adaptive_bench._setup("convcode70")
    setup = rate_replayed(base, plan_scale)
    doc: dict = {"scenario": "convcode70", "plan_scale": plan_scale, "scales": scales,
                 "git_revision": REVISION_AT_START, "command": sys.argv,
                 "phases": [describe_phase(base, n) for n in PHASES], "fleets": {}}
    out = Path(args.out)
    t0 = time.perf_counter()
    aliases: dict[str, list[str]] = {}
    found = fleets(base, setup, scales, aliases)
    print(f"{len(found)} fleets ({time.perf_counter() - t0:.0f} s): "
          + "; ".join(f"{k}: {v.describe()}" for k, v in found.items()), flush=True)
    for fname, plan in found.items():
        entry: dict = {"deployment": plan.describe(), "also": aliases.get(fname, []), "phases": {}}
        doc["fleets"][fname] = entry
        for phase in PHASES:
            placed, predicted, predicted_own, predicted_att = on_phase(setup, plan, phase)
            probes = []
            for s in scales:
                t1 = time.perf_counter()
                scaled = _phase(rate_replayed(base, s), phase)
                res = simulate_plan(placed, scaled.prepared.trace, scaled.prepared.types, setup.cost,
                                    setup.sim_config)
                att = attainment_of(scaled, res)
                counts = np.bincount(res.type_id, minlength=scaled.prepared.types.k)
                ok = bool(all(a is None or a >= setup.slo.attainment for a in att.per_type))
                probes.append({"scale": s, "ok": ok, "per_type": list(att.per_type),
                               "counts": counts.tolist()})
                shown = [round(a, 3) for a in att.per_type if a is not None]
                print(f"  {fname} on {phase} x{s:g}: {'pass' if ok else 'fail'} {shown} "
                      f"({time.perf_counter() - t1:.0f} s)", flush=True)
            passing = [p["scale"] for p in probes if p["ok"]]
            entry["phases"][phase] = {"predicted_goodput_scale": predicted * plan_scale,
                                      "predicted_own_goodput_scale": predicted_own * plan_scale,
                                      "predicted_attainment": predicted_att,
                                      "goodput_scale": max(passing) if passing else None, "probes": probes}
            out.parent.mkdir(parents=True, exist_ok=True)
            Path(f"{out}.json").write_text(json.dumps(doc, indent=1, default=str))
    doc["oracle"] = oracle(doc, setup.slo.attainment)
    doc["wall_s"] = time.perf_counter() - t0
    Path(f"{out}.json").write_text(json.dumps(doc, indent=1, default=str))
    Path(f"{out}.md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    return 0


def _pooled(a: dict, b: dict) -> list[float | None]:
    """Per-type attainment over two phases' probes (counts-weighted)."""
    out = []
    for k in range(len(a["per_type"])):
        n = a["counts"][k] + b["counts"][k]
        good = (a["per_type"][k] or 0.0) * a["counts"][k] + (b["per_type"][k] or 0.0) * b["counts"][k]
        out.append(good / n if n else None)
    return out


def _meets(att: list[float | None], target: float) -> bool:
    return all(a is None or a >= target for a in att)


def oracle(doc: dict, target: float) -> dict:
    """Per scale, the switching oracle: the pair of fleets (one for the conversation phase, one for the
    code phase, at no switch cost) whose pooled per-type attainment is best (most types at the target,
    then the lowest type highest), and the best single fleet by the same rank; pairs include the same
    fleet twice, so the oracle is never below the best single fleet."""
    def rank(att: list[float | None]) -> tuple:
        live = [a for a in att if a is not None]
        return (sum(a >= target for a in live), min(live))

    names = list(doc["fleets"])
    rows = []
    for i, s in enumerate(doc["scales"]):
        probes = {f: [doc["fleets"][f]["phases"][ph]["probes"][i] for ph in PHASES] for f in names}
        pairs = {(a, b): _pooled(probes[a][0], probes[b][1]) for a in names for b in names}
        best = max(pairs, key=lambda ab: rank(pairs[ab]))
        best_single = max(names, key=lambda f: rank(pairs[(f, f)]))
        rows.append({"scale": s, "best_per_phase": dict(zip(PHASES, best)), "switching_oracle": pairs[best],
                     "switching_oracle_ok": _meets(pairs[best], target),
                     "best_single_fleet": best_single, "best_single": pairs[(best_single, best_single)],
                     "best_single_ok": _meets(pairs[(best_single, best_single)], target)})
    return {"rows": rows,
            "switching_goodput": max([r["scale"] for r in rows if r["switching_oracle_ok"]], default=None),
            "single_goodput": max([r["scale"] for r in rows if r["best_single_ok"]], default=None)}


def markdown(doc: dict) -> str:
    lines = ["| phase | requests | req/s | input mean / p50 / p90 | output mean / p50 / p90 | type mix | "
             "per-type mean input | per-type mean output |", "|---|---:|---:|---|---|---|---|---|"]
    for p in doc["phases"]:
        lines.append(f"| {p['phase']} | {p['requests']} | {p['rate_rps']:.2f} | {p['input_mean']:.0f} / "
                     f"{p['input_p50']:.0f} / {p['input_p90']:.0f} | {p['output_mean']:.0f} / "
                     f"{p['output_p50']:.0f} / {p['output_p90']:.0f} | "
                     + ", ".join(f"{x:.2f}" for x in p["type_mix"]) + " | "
                     + ", ".join("-" if x is None else f"{x:.0f}" for x in p["type_mean_input"]) + " | "
                     + ", ".join("-" if x is None else f"{x:.0f}" for x in p["type_mean_output"]) + " |")
    lines += ["", f"Fleets planned at scale {doc['plan_scale']:g}; simulated goodput per phase "
              "(highest passing probe of " + ", ".join(f"{s:g}" for s in doc["scales"]) + ") and predicted:",
              "", "| fleet | deployment | conv: simulated | conv: predicted (loop / own) | code: simulated | "
              "code: predicted (loop / own) | code: predicted attainment | code: simulated attainment "
              "at the plan scale |", "|---|---|---:|---:|---:|---:|---|---|"]
    for name, e in doc["fleets"].items():
        cells = []
        for ph in PHASES:
            r = e["phases"].get(ph)
            gp = None if r is None else r["goodput_scale"]
            cells += ["-" if r is None else ("< min" if gp is None else f"{gp:.3f}"),
                      "-" if r is None else f"{r['predicted_goodput_scale']:.3f} / "
                                            f"{r['predicted_own_goodput_scale']:.3f}"]
        code = e["phases"]["code"]
        at_plan = next((p for p in code["probes"] if p["scale"] == doc["plan_scale"]), None)
        cells += [", ".join(f"{a:.3f}" for a in code["predicted_attainment"]),
                  "-" if at_plan is None else
                  ", ".join(f"{a:.3f}" for a in at_plan["per_type"] if a is not None)]
        also = f" (also: {'; '.join(e['also'])})" if e.get("also") else ""
        lines.append(f"| {name}{also} | {e['deployment']} | " + " | ".join(cells) + " |")
    o = doc.get("oracle")
    if o:
        lines += ["", "| scale | best on conv | best on code | switching oracle (pooled per type) | passes | "
                  "best single fleet | its pooled attainment | passes |",
                  "|---:|---|---|---|---|---|---|---|"]
        for r in o["rows"]:
            fmt = ", ".join(f"{a:.3f}" for a in r["switching_oracle"] if a is not None)
            fmt1 = ", ".join(f"{a:.3f}" for a in r["best_single"] if a is not None)
            best = r["best_per_phase"]
            lines.append(f"| {r['scale']:.3f} | {best['conv']} | {best['code']} | {fmt} | "
                         f"{'yes' if r['switching_oracle_ok'] else 'no'} | {r['best_single_fleet']} | "
                         f"{fmt1} | "
                         f"{'yes' if r['best_single_ok'] else 'no'} |")
        lines += ["", f"Switching oracle goodput: {o['switching_goodput']}; "
                  f"best single fleet: {o['single_goodput']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
