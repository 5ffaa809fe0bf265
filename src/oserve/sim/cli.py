"""``oserve simulate``: plan a cluster with one or more planners, simulate the trace, compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oserve.common.errors import ConfigError
from oserve.common.provenance import git_revision
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.sim.batching import BATCHING_MODES
from oserve.sim.config import CONTEXT_POLICIES, SimConfig

JSON_KEYS = ("p99_e2e_s", "p50_e2e_s", "p90_e2e_s", "p99_ttft_s", "p50_ttft_s", "p99_tpot_s",
             "throughput_rps", "throughput_tok_s", "completed", "dropped", "dropped_by_reason",
             "slo_attainment", "slo_attainment_per_type", "preemptions", "mean_utilisation", "offered_rps", "sim_wall_s", "replicas")


def register(sub) -> None:
    from oserve.cli.common_args import add_cluster_model_args, add_trace_args
    from oserve.cli.slo_args import add_slo_args

    p = sub.add_parser("simulate", help="simulate a trace on the plans of one or more planners")
    add_cluster_model_args(p)
    add_trace_args(p)
    p.add_argument("--planner", default="oserve,homogeneous,default",
                   help="comma-separated planners to compare (oserve, homogeneous, default, exhaustive)")
    p.add_argument("--plan", action="append", default=[], metavar="FILE",
                   help="also simulate a saved plan (JSON from `oserve plan --json`), repeatable")
    p.add_argument("--rate-scale", default="1",
                   help="replay the trace at this many times its rate; a comma list simulates each")
    p.add_argument("--window", default=None, metavar="START:END",
                   help="simulate only the requests arriving in [START, END) seconds")
    add_slo_args(p)
    p.add_argument("--goodput", action="store_true",
                   help="search each plan's SLO goodput: the highest rate scale at which every type's "
                        "attainment reaches the target (needs an SLO; bisection to 3%%)")
    p.add_argument("--batching", default="chunked", choices=BATCHING_MODES)
    p.add_argument("--dispatch", default="least-outstanding", choices=DISPATCH_POLICIES)
    p.add_argument("--oracle-types", action="store_true",
                   help="type requests by their true output length too (the router cannot in reality)")
    p.add_argument("--context-policy", default="truncate", choices=CONTEXT_POLICIES,
                   help="requests longer than the model's context: shorten them, or drop them")
    p.add_argument("--drain", type=float, default=600.0, metavar="S",
                   help="simulated seconds allowed after the last arrival; later finishes count as dropped")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, metavar="DIR", help="write records, plots and config here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _parse_scales(text: str) -> list[float]:
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--rate-scale: expected numbers separated by commas, got '{text}'") from None
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError("--rate-scale values must be positive")
    return scales


def _parse_window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--window: expected START:END in seconds, got '{text}'") from None
    if end <= start:
        raise ConfigError("--window: END must be after START")
    return start, end


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
                                        verify_requests=args.verify_requests)[0]
        else:
            plans[name] = plan_for(cluster, cost, prepared, name)
    for path in args.plan:
        try:
            plan = Plan.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f"cannot read plan '{path}': {exc}") from None
        if len(plan.type_names) != prepared.types.k:
            raise ConfigError(f"plan '{path}' has {len(plan.type_names)} request types, the trace was "
                              f"typed into {prepared.types.k} (use --types)")
        plans[Path(path).stem] = plan
    if not plans:
        raise ConfigError("nothing to simulate: give --planner or --plan")
    return plans


def run(args) -> int:
    from oserve.cli.common_args import resolve
    from oserve.cli.slo_args import objective_from_args, slo_from_args
    from oserve.sim.experiment import prepare_trace, simulate_at

    cluster, model, cost = resolve(args)
    slo = slo_from_args(args)
    objective = objective_from_args(args, slo)
    if args.goodput and slo is None:
        raise ConfigError("--goodput needs an SLO: give --slo loose|tight|FILE or --slo-ttft/--slo-tpot")
    scales = _parse_scales(args.rate_scale)
    config = SimConfig(batching=args.batching, dispatch=args.dispatch, oracle_types=args.oracle_types,
                       seed=args.seed, drain_s=args.drain, context_policy=args.context_policy)
    prepared = prepare_trace(args.trace, cost, args.types, args.seed, _parse_window(args.window),
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
    report = _report(args, cluster, prepared, plans, summaries, scales, config)
    report["config"]["slo"] = slo.describe() if slo else None
    if args.goodput:
        _add_goodput(report, plans, prepared, cost, config, slo)
    if args.out:
        _write_outputs(Path(args.out), report, results, summaries, scales, plans)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report, summaries, scales))
        if args.goodput:
            print(_goodput_table(report))
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


def _report(args, cluster, prepared, plans, summaries, scales, config) -> dict:
    first = scales[0]
    return {
        "cluster": cluster.describe(), "model": args.model, "trace": prepared.trace.name,
        "requests": len(prepared.trace), "requests_shortened_to_context": prepared.num_clipped,
        "rate_scales": scales,
        "results": {name: {**{k: by[first].get(k) for k in JSON_KEYS},
                           "deployment": plans[name].describe(),
                           "objective": plans[name].objective,
                           "predicted_goodput_scale": plans[name].predicted_goodput_scale,
                           "planned_simulated_goodput_scale": plans[name].simulated_goodput_scale,
                           "planner_seconds": plans[name].planner_seconds,
                           "by_rate_scale": {str(s): {k: v.get(k) for k, v in
                                                      ((k, by[s]) for k in JSON_KEYS)}
                                             for s in scales}}
                    for name, by in summaries.items()},
        "config": {"sim": config.model_dump(), "seed": args.seed, "types": args.types,
                   "slo_ttft_s": args.slo_ttft, "slo_tpot_s": args.slo_tpot, "slo_file": args.slo,
                   "attainment_target": args.attainment,
                   "window": args.window, "git_revision": git_revision(),
                   "command": sys.argv},
    }


def _write_outputs(out: Path, report: dict, results, summaries, scales, plans) -> None:
    from oserve.sim.plots import latency_cdfs, p99_vs_rate

    out.mkdir(parents=True, exist_ok=True)
    for name, by in results.items():
        for s, res in by.items():
            res.write_records_csv(out / f"records_{name}_x{s:g}.csv")
            res.write_replicas_csv(out / f"replicas_{name}_x{s:g}.csv")
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "config.json").write_text(json.dumps(
        {**report["config"], "plans": {name: plan.to_dict() for name, plan in plans.items()}}, indent=2))
    latency_cdfs({name: by[scales[0]] for name, by in results.items()}, out / "latency_cdf.png",
                 f"{report['model']} on {report['cluster']}, {report['trace']} x{scales[0]:g}")
    series = {name: [(by[s]["offered_rps"], by[s]["p99_e2e_s"]) for s in scales]
              for name, by in summaries.items()}
    p99_vs_rate(series, out / "p99_vs_rate.png", f"{report['model']} on {report['cluster']}")


def _table(report: dict, summaries, scales) -> str:
    lines = [f"{report['model']} on {report['cluster']}, trace {report['trace']} "
             f"({report['requests']} requests, {report['requests_shortened_to_context']} shortened "
             f"to the context window)", ""]
    head = (f"{'planner':<12} {'x':>5} {'deployment':<44} {'P50 e2e':>8} {'P99 e2e':>8} "
            f"{'P99 TTFT':>8} {'P99 TPOT':>8} {'req/s':>7} {'SLO':>6} {'dropped':>7}")
    lines += [head, "-" * len(head)]
    for name, by in summaries.items():
        dep = report["results"][name]["deployment"]
        for s in scales:
            m = by[s]
            slo = "" if m["slo_attainment"] is None else f"{m['slo_attainment']:.1%}"
            lines.append(f"{name:<12} {s:>5g} {dep[:44]:<44} {_s(m['p50_e2e_s'])} {_s(m['p99_e2e_s'])} "
                         f"{_s(m['p99_ttft_s'])} {_s(m['p99_tpot_s'], 3)} {m['throughput_rps']:7.2f} "
                         f"{slo:>6} {m['dropped']:>7}")
    return "\n".join(lines)


def _goodput_table(report: dict) -> str:
    lines = ["", f"SLO goodput ({report['config']['slo']}): highest rate scale at which every type "
             "reaches the target", f"{'planner':<12} {'scale':>6}  attainment per type at that scale"]
    for name, r in report["results"].items():
        att = r["attainment_at_goodput"]
        per = "  ".join("-" if a is None else f"{a:.1%}" for a in att["per_type"]) if att else "-"
        lines.append(f"{name:<12} {r['goodput_scale']:6.3f}  {per}")
    return "\n".join(lines)


def _s(v: float | None, digits: int = 2) -> str:
    return f"{'-':>8}" if v is None else f"{v:8.{digits}f}"
