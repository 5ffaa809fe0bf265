"""``oserve simulate``: plan a cluster with one or more planners, simulate the trace, compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oserve.cli.common_args import (
    POSITIVE,
    add_cluster_model_args,
    add_trace_args,
    config_from_flags,
    default,
    parse_time_range,
    resolve,
)
from oserve.cli.slo_args import add_slo_args, disaggregation_from_args, objective_from_args, slo_from_args
from oserve.common.errors import ConfigError
from oserve.common.provenance import git_revision
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.sim.batching import BATCHING_MODES
from oserve.sim.config import CONTEXT_POLICIES, SimConfig

SIM_FLAGS = {"batching": "--batching", "dispatch": "--dispatch-policy", "oracle_types": "--oracle-types",
             "seed": "--seed", "drain_s": "--drain-s", "context_policy": "--context-policy"}


def register(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a trace on the plans of one or more planners")
    add_cluster_model_args(p)
    add_trace_args(p)
    p.add_argument("--planner", default="oserve,homogeneous,default",
                   help="comma-separated planners to compare (oserve, homogeneous, default, exhaustive)")
    p.add_argument("--plan", action="append", default=[], metavar="FILE",
                   help="also simulate a saved plan (JSON from `oserve plan --json`), repeatable")
    p.add_argument("--rate-scale", default="1",
                   help="replay the trace at this many times its rate; a comma list simulates each")
    p.add_argument("--time-range", default=None, metavar="START:END",
                   help="simulate only the requests arriving in [START, END) seconds of the trace")
    add_slo_args(p)
    p.add_argument("--goodput", action="store_true",
                   help="search each plan's SLO goodput: the highest rate scale at which every type's "
                        "attainment reaches the target (needs an SLO; bisection to 3%%)")
    p.add_argument("--batching", default=default(SimConfig, "batching"), choices=BATCHING_MODES)
    p.add_argument("--dispatch-policy", default=default(SimConfig, "dispatch"), choices=DISPATCH_POLICIES,
                   help="per-request choice among the plan's replicas (the planner's shared policies)")
    p.add_argument("--oracle-types", action="store_true",
                   help="type requests by their true output length too (the router cannot in reality)")
    p.add_argument("--context-policy", default=default(SimConfig, "context_policy"), choices=CONTEXT_POLICIES,
                   help="requests longer than the model's context: shorten them, or drop them")
    p.add_argument("--drain-s", type=POSITIVE, default=default(SimConfig, "drain_s"), metavar="S",
                   help="simulated seconds allowed after the last arrival; later finishes count as dropped "
                        "(default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, metavar="DIR", help="write records, plots and config here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def parse_scales(text: str, flag: str = "--rate-scale") -> list[float]:
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected numbers separated by commas, got '{text}'") from None
    if not scales or not all(0 < s < float("inf") for s in scales):  # also refuses nan
        raise ConfigError(f"{flag}: values must be positive finite numbers, got '{text}'")
    return scales


def _plans(args, cluster, cost, prepared, slo=None, objective="throughput", config=None) -> dict:
    from oserve.planner.api import PLANNERS
    from oserve.planner.plan import Plan
    from oserve.sim.experiment import plan_for

    plans = {}
    for name in [x.strip() for x in args.planner.split(",") if x.strip()]:
        if name not in PLANNERS:
            raise ConfigError(f"unknown planner '{name}'; choose from {', '.join(PLANNERS)}")
        if slo is not None and objective != "throughput":
            from oserve.sim.verify import plan_with_slo

            plans[name] = plan_with_slo(cluster, cost, prepared, name, slo, objective, config,
                                        verify_requests=args.verify_requests,
                                        disaggregation=disaggregation_from_args(args))[0]
        else:
            plans[name] = plan_for(cluster, cost, prepared, name)
    for path in args.plan:
        plan = Plan.load(path)
        if len(plan.type_names) != prepared.types.k:
            raise ConfigError(f"plan '{path}' has {len(plan.type_names)} request types, the trace was "
                              f"typed into {prepared.types.k} (use --types)")
        plans[Path(path).stem] = plan
    if not plans:
        raise ConfigError("nothing to simulate: give --planner or --plan")
    return plans


def run(args) -> int:
    from oserve.sim.experiment import prepare_trace, simulate_at
    from oserve.sim.report import goodput_table, results_by_planner, table, write_outputs

    config = config_from_flags(SimConfig, {
        "batching": args.batching, "dispatch": args.dispatch_policy, "oracle_types": args.oracle_types,
        "seed": args.seed, "drain_s": args.drain_s, "context_policy": args.context_policy}, SIM_FLAGS)
    scales = parse_scales(args.rate_scale)
    time_range = parse_time_range(args.time_range)
    cluster, model, cost = resolve(args)
    slo = slo_from_args(args)
    objective = objective_from_args(args, slo)
    if args.goodput and slo is None:
        raise ConfigError("--goodput needs an SLO: give --slo loose|tight|FILE or --slo-ttft/--slo-tpot")
    prepared = prepare_trace(args.trace, cost, args.types, args.seed, time_range,
                             clip=args.context_policy == "truncate")
    plans = _plans(args, cluster, cost, prepared, slo, objective, config)
    progress = not (args.json or args.no_progress) and sys.stderr.isatty()
    done: dict[tuple[str, float], object] = {}  # planners that chose the same plan are simulated once

    def simulate(plan, scale):
        key = (json.dumps([plan.to_dict()["replicas"], plan.dispatch]), scale)
        if key not in done:
            done[key] = simulate_at(plan, prepared, cost, config, scale, progress)
        return done[key]

    results = {name: {s: simulate(plan, s) for s in scales} for name, plan in plans.items()}
    summaries = {name: {s: {**r.summary(), **_slo_summary(r, slo, prepared.types),
                            "replicas": r.replica_summary()}
                        for s, r in by.items()}
                 for name, by in results.items()}
    report = {
        "cluster": cluster.describe(), "model": args.model, "trace": prepared.trace.name,
        "requests": len(prepared.trace), "requests_shortened_to_context": prepared.num_clipped,
        "rate_scales": scales, "results": results_by_planner(summaries, plans, scales),
        "config": {"sim": config.model_dump(), "seed": args.seed, "types": args.types,
                   "slo_ttft_s": args.slo_ttft_s, "slo_tpot_s": args.slo_tpot_s, "slo_file": args.slo,
                   "attainment_target": args.attainment, "slo": slo.describe() if slo else None,
                   "time_range": args.time_range, "git_revision": git_revision(), "command": sys.argv},
    }
    if args.goodput:
        _add_goodput(report, plans, prepared, cost, config, slo)
    if args.out:
        write_outputs(Path(args.out), report, results, summaries, scales, plans)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report, summaries, scales))
        if args.goodput:
            print(goodput_table(report))
    return 0


def _slo_summary(result, slo, types) -> dict:
    """SLO attainment of one simulation, overall and per type (None without an SLO)."""
    if slo is None:
        return {"slo_attainment": None, "slo_attainment_per_type": None}
    from oserve.sim.metrics import slo_attainment

    names = types.names()
    ttft, tpot = slo.bounds(result.type_id, names, result.input_tokens)
    att = slo_attainment(result, ttft, tpot, len(names))
    return {"slo_attainment": att.overall, "slo_attainment_per_type": list(att.per_type)}


def _add_goodput(report: dict, plans: dict, prepared, cost, config, slo) -> None:
    from oserve.sim.goodput import plan_goodput

    found: dict[str, dict] = {}  # planners that chose the same plan are searched once
    for name, plan in plans.items():
        key = json.dumps([plan.to_dict()["replicas"], plan.dispatch])
        if key not in found:
            found[key] = plan_goodput(plan, prepared, cost, config, slo).to_dict(prepared.types.k)
        report["results"][name].update(found[key])
    report["types"] = prepared.types.names()
