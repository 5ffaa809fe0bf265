"""``oserve plan``: the deployment a cluster should run for a trace's traffic, and why."""

from __future__ import annotations

import json

from oserve.cli.common_args import (
    NON_NEGATIVE,
    POSITIVE,
    add_cluster_model_args,
    add_format_args,
    add_trace_args,
    config_from_flags,
    default,
    formats_from_args,
    resolve,
)
from oserve.cli.slo_args import add_slo_args, disaggregation_from_args, objective_from_args, slo_from_args
from oserve.costmodel.cost_model import CostModel
from oserve.planner.api import PLANNERS, make_plan
from oserve.planner.plan import Plan
from oserve.planner.search import SearchParams
from oserve.workload import fit_request_types, load_trace


def register(sub) -> None:
    p = sub.add_parser("plan", help="choose a deployment for a cluster, model and trace")
    add_cluster_model_args(p)
    add_trace_args(p)
    p.add_argument("--planner", default="oserve", choices=PLANNERS)
    p.add_argument("--rate-scale", type=POSITIVE, default=1.0,
                   help="plan for the trace's rates multiplied by this factor")
    p.add_argument("--no-pp", action="store_true", help="consider tensor parallelism only")
    p.add_argument("--min-gain", type=NON_NEGATIVE,
                   default=default(SearchParams, "min_gain_over_homogeneous"),
                   help="predicted capacity gain a heterogeneous deployment needs over the best "
                        "homogeneous one to be chosen by the oserve planner (default %(default)s)")
    add_format_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_slo_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    search = config_from_flags(SearchParams, {"min_gain_over_homogeneous": args.min_gain},
                               {"min_gain_over_homogeneous": "--min-gain"})
    cluster, model, cost = resolve(args)
    slo = slo_from_args(args)
    objective = objective_from_args(args, slo)
    trace, num_clipped = load_trace(args.trace).clipped_to_context(model.max_context_tokens)
    if args.rate_scale != 1.0:
        trace = trace.scaled(args.rate_scale)
    types = fit_request_types(trace, args.types, args.seed)
    stats = types.stats(trace)
    verification = None
    formats = formats_from_args(args)
    if slo is None:
        plan = make_plan(cluster, model, stats, args.planner, cost, allow_pp=not args.no_pp,
                         search=search, weight_formats=formats[0], kv_formats=formats[1])
    else:
        plan, verification = _plan_with_slo(args, cluster, cost, trace, num_clipped, types, stats, slo,
                                            objective, search, formats)
    notes = uncalibrated_notes(plan, cost)
    if args.json:
        out = plan.to_dict()
        out.update(cluster=cluster.describe(), trace=trace.name, requests_shortened=num_clipped,
                   online_mistype_rate=types.online_mistype_rate(trace),
                   slo=slo.describe() if slo else None, uncalibrated=notes)
        if verification is not None:
            out.update(verification.to_dict())
        print(json.dumps(out, indent=2))
    else:
        if num_clipped:
            print(f"note: {num_clipped} of {len(trace)} requests exceed {model.name}'s "
                  f"{model.max_context_tokens}-token context and were shortened to fit")
        print(render(plan, cluster.describe(), trace.name))
        if slo is not None:
            print(render_goodput(plan, slo, verification))
        for note in notes:
            print(f"uncalibrated: {note}")
    return 0


def uncalibrated_notes(plan: Plan, cost: CostModel) -> list[str]:
    """One line per number-format factor the plan's replicas rely on that no profile has measured."""
    notes = []
    for cfg in dict.fromkeys(plan.configs()):
        for what, factor in cost.precision_factors(cfg).items():
            if factor.source == "assumed":
                line = f"{cfg.label()}: {what} ({factor.note})"
                if line not in notes:
                    notes.append(line)
    return notes


def _plan_with_slo(args, cluster, cost, trace, num_clipped, types, stats, slo, objective, search, formats):
    """Plan under an SLO: the latency model's shortlist, verified by the simulator (oserve.sim)."""
    from oserve.sim.config import SimConfig
    from oserve.sim.experiment import PreparedTrace
    from oserve.sim.verify import plan_with_slo

    prepared = PreparedTrace(trace, types, stats, num_clipped)
    if objective == "throughput":
        from oserve.planner.slo_planner import score_plan, slo_workload

        plan = make_plan(cluster, cost.model, stats, args.planner, cost, allow_pp=not args.no_pp,
                         search=search, weight_formats=formats[0], kv_formats=formats[1])
        return score_plan(plan, cost, stats, slo_workload(trace, types, stats, slo), cluster), None
    return plan_with_slo(cluster, cost, prepared, args.planner, slo, objective, SimConfig(seed=args.seed),
                         allow_pp=not args.no_pp, verify_requests=args.verify_requests,
                         weight_formats=formats[0], kv_formats=formats[1],
                         disaggregation=disaggregation_from_args(args))


def render_goodput(plan: Plan, slo, verification) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:.2f}x"
    lines = ["", f"SLO: {slo.describe()}; objective {plan.objective}",
             f"Goodput scale (highest rate scale at which every type meets the target): predicted "
             f"{fmt(plan.predicted_goodput_scale)}, simulated {fmt(plan.simulated_goodput_scale)}"]
    if verification is not None:
        lines.append(f"Shortlist simulated on {verification.requests} requests around the trace's "
                     "busiest 10 s:")
        pruned = verification.pruned_at or (None,) * len(verification.candidates)
        for p, at in zip(verification.candidates, pruned):
            sim = f"misses at {at:.2f}x (pruned)" if at is not None else fmt(p.simulated_goodput_scale)
            lines.append(f"  {p.describe():<56} predicted {fmt(p.predicted_goodput_scale)}  "
                         f"simulated {sim}")
        checks = ((verification.confirmation, "Best colocated plan", "the tuned fleet"),
                  (verification.group_confirmation, "Disaggregated winner", "the colocated choice"))
        for c, of, baseline in checks:
            if c is not None:
                verdict = "confirmed" if c.confirmed else f"not confirmed: {baseline} stays"
                lines.append(f"{of} re-checked on {c.requests} requests: {c.challenger} at "
                             f"{c.probed_scale:.2f}x against {c.baseline}'s {c.baseline_scale:.2f}x, "
                             f"{verdict}")
    return "\n".join(lines)


def _ids(replicas) -> str:
    return ", ".join(f"r{r.replica_id}" for r in replicas)


def render(plan: Plan, cluster: str, trace: str) -> str:
    lines = [f"Plan for {plan.model} on {cluster}, trace {trace} (planner {plan.planner}, "
             f"{plan.planner_seconds:.2f} s)", f"Deployment: {plan.describe()}", "",
             "Replicas:"]
    for r in plan.replicas:
        mark = "  <- bottleneck" if r.replica_id in plan.bottlenecks else ""
        gpus = ",".join(str(g) for g in r.gpus)
        lines.append(f"  r{r.replica_id:<3} {r.label():<20} GPUs [{gpus}]  "
                     f"utilisation {plan.utilisation[r.replica_id]:6.1%}{mark}")
    for g, (prefill, decode) in plan.groups().items():
        lines.append(f"  group {g}: prefill on {_ids(prefill)} hands its KV caches to decode on "
                     f"{_ids(decode)}")
    lines += ["", "Dispatch (share of each type's requests per replica; capacity alone in req/s):"]
    header = "  " + " " * 28 + "".join(f"  r{r.replica_id:<5}" for r in plan.replicas)
    lines.append(header)
    for t, name in enumerate(plan.type_names):
        row = "".join(f"  {plan.dispatch[t][r.replica_id]:6.1%}" for r in plan.replicas)
        lines.append(f"  {name:<22}{plan.type_rates_rps[t]:5.2f}/s{row}")
    lines += ["", f"Predicted capacity: {plan.demand_scale:.2f}x the trace's rate "
                  f"({plan.demand_scale * sum(plan.type_rates_rps):.1f} req/s in this mix)."]
    return "\n".join(lines)
