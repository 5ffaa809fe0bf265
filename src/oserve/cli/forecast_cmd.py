"""``oserve forecast``: backtest per-type rate forecasters (eval), train and save the LSTM (train), and
write a SYNTHETIC diurnal trace (synth)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from oserve.cli.common_args import POSITIVE, POSITIVE_INT, default, number
from oserve.common.errors import ConfigError
from oserve.forecast.backtest import backtest, split_index
from oserve.forecast.baselines import EWMA, LastValue, MovingAverage, SeasonalNaive
from oserve.forecast.lstm import LSTMParams
from oserve.forecast.report import Pretrained, render, write_eval_outputs
from oserve.forecast.series import rate_series
from oserve.forecast.synthetic import (
    SYNTHETIC_PREFIX,
    DiurnalSpec,
    load_any_trace,
    synthetic_diurnal_trace,
)
from oserve.workload import fit_request_types

MODELS = ("last", "moving-avg", "ewma", "seasonal-naive", "lstm")


def register(sub) -> None:
    p = sub.add_parser("forecast", help="forecast per-type arrival rates: eval, train, synth")
    fsub = p.add_subparsers(dest="forecast_command", required=True, metavar="ACTION")
    ev = fsub.add_parser("eval", help="backtest forecasters on a held-out tail of a trace")
    _common(ev)
    ev.add_argument("--forecasters", default=",".join(MODELS),
                    help=f"comma-separated subset of {', '.join(MODELS)} (lstm needs torch)")
    ev.add_argument("--lstm", default=None, metavar="FILE", help="use this trained LSTM instead of "
                    "training one on the training head")
    ev.add_argument("--season-s", type=POSITIVE, default=None, metavar="S",
                    help="season of the seasonal-naive model in seconds (e.g. 21600 for 6 h)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--out", default=None, metavar="DIR", help="write results, config and a plot here")
    ev.set_defaults(func=run_eval)
    tr = fsub.add_parser("train", help="train the per-type LSTM on a trace's head and save it")
    _common(tr)
    tr.add_argument("--out", required=True, metavar="FILE", help="where to save the model (.pt)")
    tr.add_argument("--epochs", type=POSITIVE_INT, default=default(LSTMParams, "epochs"))
    tr.add_argument("--lookback", type=POSITIVE_INT, default=default(LSTMParams, "lookback"),
                    help="windows of history the LSTM reads")
    tr.set_defaults(func=run_train)
    sy = fsub.add_parser("synth", help="write a SYNTHETIC multi-hour diurnal trace (CSV)")
    sy.add_argument("--hours", type=POSITIVE, default=default(DiurnalSpec, "duration_s") / 3600.0)
    sy.add_argument("--period-s", type=POSITIVE, default=default(DiurnalSpec, "period_s"), metavar="S",
                    help="length of one synthetic day in seconds (default %(default)s)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--out", required=True, metavar="FILE")
    sy.set_defaults(func=run_synth)


def _common(p) -> None:
    p.add_argument("--trace", default="azure-conv", help="trace file, a built-in name, "
                   f"{SYNTHETIC_PREFIX}[:HOURS] (generated, SYNTHETIC) or phases:A,B,... (traces one "
                   "after another)")
    p.add_argument("--window-s", type=POSITIVE, default=10.0, metavar="S",
                   help="rate-measurement (forecast) window in seconds (default %(default)s)")
    p.add_argument("--types", type=POSITIVE_INT, default=4, help="number of request types")
    p.add_argument("--train-frac", type=number(float, 0.0, 1.0, low_open=True), default=0.7,
                   help="head of the series used to fit")
    p.add_argument("--seed", type=int, default=0)


def _series(args):
    trace = load_any_trace(args.trace, args.seed)
    window_s = args.window_s
    num_windows = int(trace.arrival_s[-1] // window_s)
    split = split_index(num_windows, args.train_frac)
    # Request types are fitted on the training head only, so nothing of the tail leaks into the model.
    types = fit_request_types(trace.window(0.0, split * window_s), args.types, args.seed)
    return trace, types, rate_series(trace, types, window_s)


def _forecasters(args, window_s: float) -> list[Any]:
    names = [m.strip() for m in args.forecasters.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ConfigError(f"--forecasters: unknown forecasters {unknown}; choose from {', '.join(MODELS)}")
    out: list[Any] = []
    for name in names:
        if name == "last":
            out.append(LastValue())
        elif name == "moving-avg":
            out.append(MovingAverage())
        elif name == "ewma":
            out.append(EWMA())
        elif name == "seasonal-naive":
            if args.season_s:
                out.append(SeasonalNaive(max(1, round(args.season_s / window_s))))
        elif name == "lstm":
            out.append(_lstm(args))
    return [f for f in out if f is not None]


def _lstm(args):
    if importlib.util.find_spec("torch") is None:
        if args.lstm:
            raise ConfigError("--lstm needs PyTorch: pip install -e '.[forecast]'")
        return None  # reported as skipped
    from oserve.forecast.lstm import LSTMForecaster

    if args.lstm:
        model, _meta = LSTMForecaster.load(args.lstm)
        return Pretrained(model)
    return LSTMForecaster(LSTMParams(seed=args.seed))


def run_eval(args) -> int:
    trace, _types, series = _series(args)
    forecasters = _forecasters(args, series.window_s)
    if not forecasters:
        raise ConfigError("no forecaster to evaluate (lstm needs torch; seasonal-naive needs --season-s)")
    result = backtest(series, forecasters, args.train_frac)
    skipped = [m for m in args.forecasters.split(",") if m.strip() == "lstm"] if not any(
        s.name.startswith("lstm") for s in result.scores) else []
    doc = result.to_dict()
    doc.update(trace=trace.name, synthetic=bool(trace.meta.get("synthetic")), skipped=skipped,
               seed=args.seed, train_frac=args.train_frac)
    if args.out:
        write_eval_outputs(Path(args.out), doc, result, series,
                           {k: v for k, v in vars(args).items() if k != "func"})
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(result, trace.name, skipped))
    return 0


def run_train(args) -> int:
    from oserve.forecast.lstm import LSTMForecaster

    trace, types, series = _series(args)
    split = split_index(series.num_windows, args.train_frac)
    t0 = time.perf_counter()
    model = LSTMForecaster(LSTMParams(lookback=args.lookback, epochs=args.epochs, seed=args.seed))
    model = model.fit(series.rates_rps[:split])
    meta = {"trace": trace.name, "window_s": series.window_s, "types": list(series.type_names),
            "train_windows": split, "seed": args.seed, "synthetic": bool(trace.meta.get("synthetic"))}
    model.save(args.out, meta)
    print(f"trained {len(series.type_names)} per-type LSTMs on {split} windows of {trace.name} "
          f"({series.window_s:g} s) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def run_synth(args) -> int:
    spec = DiurnalSpec(duration_s=args.hours * 3600.0, period_s=args.period_s)
    trace = synthetic_diurnal_trace(spec, args.seed)
    out = Path(args.out)
    rows = np.column_stack([trace.arrival_s, trace.input_tokens, trace.output_tokens])
    np.savetxt(out, rows, fmt=["%.6f", "%d", "%d"], delimiter=",",
               header="arrival_s,input_tokens,output_tokens", comments="")
    print(f"wrote SYNTHETIC trace {trace.name}: {len(trace)} requests over {args.hours:g} h -> {out}")
    return 0
