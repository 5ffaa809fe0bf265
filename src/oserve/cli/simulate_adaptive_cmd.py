"""``oserve simulate-adaptive``: the closed loop (forecast, switching policy, switches) in simulation,
compared with static deployments on a workload whose mix shifts."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from oserve.cli.common_args import (
    NON_NEGATIVE,
    POSITIVE,
    add_cluster_model_args,
    add_trace_args,
    default,
    resolve,
)
from oserve.cli.slo_args import add_slo_args, slo_from_args
from oserve.common.errors import ConfigError
from oserve.forecast.synthetic import load_any_trace
from oserve.sim.adaptive_experiment import ABLATIONS, FORECASTERS, MODES, AdaptiveSetup, compare
from oserve.sim.config import SimConfig
from oserve.switching.io_profile import IoProfile
from oserve.switching.policy import POLICY_OBJECTIVES, SwitchParams


def register(sub) -> None:
    p = sub.add_parser("simulate-adaptive", help="simulate forecasting + switching against static plans")
    add_cluster_model_args(p)
    add_trace_args(p)
    p.set_defaults(trace="synthetic-diurnal:0.5:10")
    p.add_argument("--rate-scale", type=POSITIVE, default=1.0, help="replay the trace this many times faster")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {MODES + ABLATIONS}")
    p.add_argument("--control-interval-s", type=POSITIVE,
                   default=default(AdaptiveSetup, "control_interval_s"),
                   metavar="S", help="how often the controller decides (default %(default)s)")
    p.add_argument("--forecaster", default="ewma", choices=sorted(FORECASTERS))
    p.add_argument("--lstm", default=None, metavar="FILE", help="forecast with this trained LSTM "
                   "(oserve forecast train, same --types and a --window-s equal to --control-interval-s)")
    p.add_argument("--warmup-s", type=POSITIVE, default=default(AdaptiveSetup, "warmup_s"), metavar="S",
                   help="the initial plan is for this first stretch (default %(default)s)")
    p.add_argument("--horizon-s", type=POSITIVE, default=default(SwitchParams, "horizon_s"), metavar="S",
                   help="gain of a switch is counted over this horizon (default %(default)s)")
    p.add_argument("--min-gap-s", type=NON_NEGATIVE, default=default(SwitchParams, "min_gap_s"), metavar="S",
                   help="minimum time between two switches (default %(default)s)")
    p.add_argument("--hysteresis", type=NON_NEGATIVE, default=default(SwitchParams, "hysteresis"))
    p.add_argument("--forecast-error", type=NON_NEGATIVE, default=default(SwitchParams, "forecast_error"),
                   metavar="CV", help="relative RMS error of a one-interval forecast; goodput prices average "
                   "over it (0: at the forecast alone; default %(default)s)")
    p.add_argument("--switch-drain-s", type=NON_NEGATIVE, default=default(SwitchParams, "drain_s"),
                   metavar="S", help="drain budget of a switch (default %(default)s)")
    p.add_argument("--restart-overhead-s", type=NON_NEGATIVE,
                   default=default(SwitchParams, "restart_overhead_s"), metavar="S",
                   help="engine start, communicator set-up, CUDA graph capture (default %(default)s)")
    p.add_argument("--disk-gbps", type=POSITIVE, default=None,
                   help="storage read rate for reloads (default: measured H100 machine, 1.87 GB/s)")
    p.add_argument("--objective", default=default(SwitchParams, "objective"), choices=POLICY_OBJECTIVES,
                   help="of the switch-* and gated-* loops: goodput (fixed fleet) or min-gpus (elastic: the "
                        "fleet sized to the forecast; the mode 'elastic' is switch-p2p under min-gpus)")
    p.add_argument("--no-redispatch", action="store_true", help="between switches keep the deployed "
                   "plan's dispatch instead of re-weighting it for each forecast")
    add_slo_args(p, planning=False)  # what the plans, the switch prices and the goodput are held to
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default=None, metavar="DIR", help="write results, timeline and plot here")
    p.set_defaults(func=run)


def _setup(args):
    from oserve.sim.experiment import prepare_trace

    cluster, _model, cost = resolve(args)
    trace = load_any_trace(args.trace, args.seed)
    if args.rate_scale != 1.0:
        trace = trace.scaled(args.rate_scale)
    io = IoProfile.h100()
    if args.disk_gbps is not None:
        io = IoProfile(args.disk_gbps, io.h2d_gbps)
    switch = SwitchParams(horizon_s=args.horizon_s, min_gap_s=args.min_gap_s, hysteresis=args.hysteresis,
                          drain_s=args.switch_drain_s, restart_overhead_s=args.restart_overhead_s,
                          objective=args.objective, forecast_error=args.forecast_error)
    prepared = prepare_trace(trace, cost, args.types, args.seed)
    interval_s = args.control_interval_s
    setup = AdaptiveSetup(cluster, cost, prepared, SimConfig(seed=args.seed), switch, interval_s,
                          args.warmup_s, _forecaster(args, interval_s), io, not args.no_redispatch)
    slo = slo_from_args(args)  # None: the setup's default, the loose preset
    return cluster, setup if slo is None else replace(setup, slo=slo)


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
                          f"--control-interval-s is {interval_s:g} s")
    return model


def run(args) -> int:
    from oserve.common.provenance import git_revision
    from oserve.sim.adaptive_report import ratios, table, write_outputs

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES + ABLATIONS))
    if bad or not modes:
        raise ConfigError(f"--modes: unknown modes {bad}; choose from {', '.join(MODES + ABLATIONS)}")
    cluster, setup = _setup(args)
    out = compare(setup, modes, args.slo_ttft_s, args.slo_tpot_s)
    report = {"cluster": cluster.describe(), "model": args.model, "trace": setup.prepared.trace.name,
              "synthetic": bool(setup.prepared.trace.meta.get("synthetic")),
              "requests": len(setup.prepared.trace), "slo": setup.slo.describe(),
              "attainment_target": setup.slo.attainment,
              "modes": {m: {k: v for k, v in r.items() if k not in ("result", "timeline")}
                        for m, r in out.items()},
              "config": {k: v for k, v in vars(args).items() if k != "func"} | {
                  "git_revision": git_revision(), "command": sys.argv}}
    report["ratios"] = ratios(report["modes"])
    if args.out:
        write_outputs(Path(args.out), report, out, setup)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0
