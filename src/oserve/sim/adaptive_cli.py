"""``oserve simulate-adaptive``: the closed loop (forecast, switching policy, switches) in simulation,
compared with static deployments on a workload whose mix shifts."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from oserve.common.errors import ConfigError
from oserve.forecast.series import parse_duration_s
from oserve.forecast.synthetic import load_any_trace
from oserve.sim.adaptive_experiment import ABLATIONS, FORECASTERS, MODES, AdaptiveSetup, compare
from oserve.sim.config import SimConfig
from oserve.switching.io_profile import IoProfile
from oserve.switching.policy import SwitchParams


def register(sub) -> None:
    from oserve.cli.common_args import add_cluster_model_args, add_trace_args
    from oserve.switching import cli as switching_cli

    switching_cli.register(sub)  # `oserve transfer-plan` (the switching layer has no CLI hook of its own)

    p = sub.add_parser("simulate-adaptive", help="simulate forecasting + switching against static plans")
    add_cluster_model_args(p)
    add_trace_args(p)
    p.set_defaults(trace="synthetic-diurnal:0.5:10")
    p.add_argument("--rate-scale", type=float, default=1.0, help="replay the trace this many times faster")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {MODES + ABLATIONS}")
    p.add_argument("--control-interval", default="60s", help="how often the controller decides")
    p.add_argument("--forecaster", default="ewma", choices=sorted(FORECASTERS))
    p.add_argument("--lstm", default=None, metavar="FILE", help="forecast with this trained LSTM "
                   "(oserve forecast train, same --types and a window equal to --control-interval)")
    p.add_argument("--warmup", default="5m", help="the initial plan is for this first stretch")
    p.add_argument("--horizon", default="10m", help="gain of a switch is counted over this horizon")
    p.add_argument("--min-gap", default="5m", help="minimum time between two switches")
    p.add_argument("--hysteresis", type=float, default=0.2)
    p.add_argument("--drain", type=float, default=5.0, metavar="S", help="drain budget of a switch")
    p.add_argument("--restart-overhead", type=float, default=5.0, metavar="S")
    p.add_argument("--disk-gbps", type=float, default=None,
                   help="storage read rate for reloads (default: measured H100 machine, 1.87 GB/s)")
    p.add_argument("--no-redispatch", action="store_true", help="between switches keep the deployed "
                   "plan's dispatch instead of re-weighting it for each forecast")
    p.add_argument("--slo-ttft", type=float, default=None, metavar="S")
    p.add_argument("--slo-tpot", type=float, default=None, metavar="S")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, metavar="DIR", help="write results, timeline and plot here")
    p.set_defaults(func=run)


def _setup(args):
    from oserve.cli.common_args import resolve
    from oserve.sim.experiment import prepare_trace

    cluster, _model, cost = resolve(args)
    trace = load_any_trace(args.trace, args.seed)
    if args.rate_scale != 1.0:
        trace = trace.scaled(args.rate_scale)
    io = IoProfile.h100()
    if args.disk_gbps is not None:
        if args.disk_gbps <= 0:
            raise ConfigError("--disk-gbps must be positive")
        io = IoProfile(args.disk_gbps, io.h2d_gbps)
    switch = SwitchParams(horizon_s=parse_duration_s(args.horizon), min_gap_s=parse_duration_s(args.min_gap),
                          hysteresis=args.hysteresis, drain_s=args.drain,
                          restart_overhead_s=args.restart_overhead)
    prepared = prepare_trace(trace, cost, args.types, args.seed)
    interval_s = parse_duration_s(args.control_interval)
    return cluster, AdaptiveSetup(cluster, cost, prepared, SimConfig(seed=args.seed), switch, interval_s,
                                  parse_duration_s(args.warmup), _forecaster(args, interval_s), io,
                                  not args.no_redispatch)


def _forecaster(args, interval_s: float):
    if not args.lstm:
        return args.forecaster
    from oserve.forecast.lstm import LSTMForecaster

    model, meta = LSTMForecaster.load(args.lstm)
    if len(model.scale) - 1 != args.types:
        raise ConfigError(f"LSTM '{args.lstm}' forecasts {len(model.scale) - 1} types, not --types "
                          f"{args.types}")
    if meta.get("window_s") not in (None, interval_s):
        raise ConfigError(f"LSTM '{args.lstm}' was trained on {meta['window_s']:g} s windows, the "
                          f"control interval is {interval_s:g} s")
    return model


def run(args) -> int:
    from oserve.common.provenance import git_revision

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES + ABLATIONS))
    if bad or not modes:
        raise ConfigError(f"unknown modes {bad}; choose from {', '.join(MODES + ABLATIONS)}")
    cluster, setup = _setup(args)
    out = compare(setup, modes, args.slo_ttft, args.slo_tpot)
    report = {"cluster": cluster.describe(), "model": args.model, "trace": setup.prepared.trace.name,
              "synthetic": bool(setup.prepared.trace.meta.get("synthetic")),
              "requests": len(setup.prepared.trace),
              "modes": {m: {k: v for k, v in r.items() if k not in ("result", "timeline")}
                        for m, r in out.items()},
              "config": {k: v for k, v in vars(args).items() if k != "func"} | {
                  "git_revision": git_revision(), "command": sys.argv}}
    report["ratios"] = _ratios(report["modes"])
    if args.out:
        _write(Path(args.out), report, out, setup)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


def _ratios(modes: dict) -> dict:
    """P99 end-to-end latency and throughput of each mode relative to oserve's switching (p2p)."""
    ref = modes.get("switch-p2p", {}).get("summary")
    if not ref or not ref.get("p99_e2e_s"):
        return {}
    return {m: {"p99_e2e_vs_switch_p2p": (r["summary"]["p99_e2e_s"] or float("nan")) / ref["p99_e2e_s"],
                "throughput_vs_switch_p2p": r["summary"]["throughput_rps"] / ref["throughput_rps"]}
            for m, r in modes.items()}


def _table(report: dict) -> str:
    synth = " (SYNTHETIC)" if report["synthetic"] else ""
    lines = [f"{report['model']} on {report['cluster']}, trace {report['trace']}{synth}, "
             f"{report['requests']} requests", ""]
    head = (f"{'mode':<20}{'switches':>9}{'P50 e2e':>9}{'P99 e2e':>9}{'P99 TTFT':>9}{'req/s':>8}"
            f"{'done':>8}  initial deployment")
    lines += [head, "-" * len(head)]
    for m, r in report["modes"].items():
        s = r["summary"]
        lines.append(f"{m:<20}{r['num_switches']:>9}{_f(s['p50_e2e_s'])}{_f(s['p99_e2e_s'])}"
                     f"{_f(s['p99_ttft_s'])}{s['throughput_rps']:8.2f}{s['completed']:>8}  {r['deployment']}")
    return "\n".join(lines)


def _f(v) -> str:
    return f"{'-':>9}" if v is None else f"{v:9.2f}"


def _write(out: Path, report: dict, results: dict, setup: AdaptiveSetup) -> None:
    from oserve.sim.adaptive_plots import plot_adaptive

    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptive_results.json").write_text(json.dumps(report, indent=2, default=str))
    timelines = {m: r["timeline"] for m, r in results.items() if "timeline" in r}
    for mode, timeline in timelines.items():
        with (out / f"timeline_{mode}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["time_s", "observed_rps", "forecast_rps", "deployment", "switched", "reason",
                        "switch_s", "decide_s"])
            for r in timeline:
                w.writerow([r.time_s, ";".join(f"{x:.3f}" for x in r.observed_rps),
                            ";".join(f"{x:.3f}" for x in r.forecast_rps), r.deployment, r.switched,
                            r.reason, f"{r.switch_s:.2f}", f"{r.decide_seconds:.3f}"])
    if timelines:
        plot_adaptive(out / "adaptive.png", timelines, setup.prepared.types.names(),
                      f"{report['model']} on {report['cluster']}, {report['trace']}")
