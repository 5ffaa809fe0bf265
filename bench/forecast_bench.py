"""Forecast accuracy: RRMSE of one-window-ahead per-type forecasts on the held-out tail (last 30%).

Real traces (the shipped Azure conversation, code and both merged; one hour each) at 10, 30 and 60 s
windows; the same hours as rate-scaled replays (``stitch:SRC/0-3600*F``: F times the requests per window
over the same wall time, the real minute-scale shape kept, ``oserve.workload.drift``) at F = 4 and 16, so
that per-type counts rise above the Poisson floor; a REAL-DRIFT stitched trace; and a SYNTHETIC 12-hour
diurnal trace (two 6-hour "days", generator in oserve.forecast.synthetic) at 60 and 300 s windows.
Request types (k=4) are fitted on the training head only. Every row carries its Poisson floor, the best
baseline, the LSTM's ratio to it and whether there was signal to learn (best baseline above 1.25x the
floor). Writes bench/results/forecast_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.forecast.backtest import backtest, split_index
from oserve.forecast.baselines import baseline_forecasters
from oserve.forecast.series import rate_series
from oserve.forecast.synthetic import load_any_trace
from oserve.workload import fit_request_types

SETTINGS = [("azure-conv", 10), ("azure-conv", 30), ("azure-conv", 60),
            ("azure-code", 10), ("azure-code", 30), ("azure-code", 60),
            ("azure-mix", 10), ("azure-mix", 30), ("azure-mix", 60),
            ("stitch:azure-conv/0-3600*4", 10), ("stitch:azure-conv/0-3600*4", 60),
            ("stitch:azure-conv/0-3600*16", 10), ("stitch:azure-conv/0-3600*16", 60),
            ("stitch:azure-mix/0-3600*16", 10), ("stitch:azure-mix/0-3600*16", 60),
            ("real-drift:conv-code-mix", 30),
            ("synthetic-diurnal:12", 60), ("synthetic-diurnal:12", 300)]
BASELINES = ("last", "moving-avg", "ewma", "seasonal-naive")
SIGNAL_OVER_FLOOR = 1.25  # a best baseline this far above the Poisson floor leaves something to learn
SEASON_S = 6 * 3600


def one(trace_spec: str, window_s: float, seed: int, with_lstm: bool) -> dict:
    trace = load_any_trace(trace_spec, seed)
    split = split_index(int(trace.arrival_s[-1] // window_s), 0.7)
    types = fit_request_types(trace.window(0.0, split * window_s), 4, seed)
    series = rate_series(trace, types, window_s)
    season = SEASON_S // int(window_s) if trace.meta.get("synthetic") else None
    models = baseline_forecasters(season_windows=season)
    if with_lstm:
        from oserve.forecast.lstm import LSTMForecaster, LSTMParams

        models.append(LSTMForecaster(LSTMParams(seed=seed)))
    t0 = time.perf_counter()
    res = backtest(series, models, 0.7)
    doc = res.to_dict()
    doc.update(trace=trace.name, synthetic=bool(trace.meta.get("synthetic")),
               wall_s=time.perf_counter() - t0)
    return doc


def markdown(results: list[dict], key: str = "rrmse_mean") -> str:
    names = list(dict.fromkeys(m["name"] for r in results for m in r["models"]))
    lines = ["| trace | window | test windows | Poisson floor | " + " | ".join(names) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(names)]
    for r in results:
        by = {m["name"]: m for m in r["models"]}
        floor = np.nanmean(r["poisson_floor_rrmse"])
        if key == "rrmse_total":  # Poisson floor of the summed rate
            total = sum(r["mean_rate_rps"])
            floor = np.sqrt(total / r["window_s"]) / total
        cells = []
        best = min(by[n][key] for n in names if n in by)
        for n in names:
            v = by[n][key] if n in by else None
            cells.append("-" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}"))
        lines.append(f"| {r['trace']} | {r['window_s']:g} s | {r['num_test_windows']} | {floor:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: list[dict]) -> list[dict]:
    """Per row: the floor, the best baseline, the LSTM against it, whether there was signal."""
    out = []
    for r in results:
        by = {m["name"].split("(")[0]: m for m in r["models"]}
        base = {n: by[n]["rrmse_mean"] for n in BASELINES if n in by}
        best = min(base, key=lambda n: base[n])
        floor = float(np.nanmean(r["poisson_floor_rrmse"]))
        lstm = by.get("lstm")
        out.append({"trace": r["trace"], "window_s": r["window_s"], "floor": floor, "best_baseline": best,
                    "best_baseline_rrmse": base[best], "signal": base[best] > SIGNAL_OVER_FLOOR * floor,
                    "lstm_rrmse": lstm["rrmse_mean"] if lstm else None,
                    "lstm_vs_best": lstm["rrmse_mean"] / base[best] if lstm else None,
                    "max_ms_per_call": 1e3 * max(m.get("seconds_per_call", 0.0) for m in r["models"])})
    return out


def verdict_markdown(rows: list[dict]) -> str:
    lines = ["| trace | window | Poisson floor | best baseline | its RRMSE | signal above floor | "
             "LSTM RRMSE | LSTM / best baseline | slowest predict (ms/call) |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for v in rows:
        lstm = "-" if v["lstm_rrmse"] is None else f"{v['lstm_rrmse']:.3f}"
        ratio = "-" if v["lstm_vs_best"] is None else f"{v['lstm_vs_best']:.3f}"
        lines.append(f"| {v['trace']} | {v['window_s']:g} s | {v['floor']:.3f} | {v['best_baseline']} | "
                     f"{v['best_baseline_rrmse']:.3f} | {'yes' if v['signal'] else 'no'} | {lstm} | "
                     f"{ratio} | {v['max_ms_per_call']:.2f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({m["name"] for r in results for m in r["models"]})
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / (len(names) + 1)
    x = np.arange(len(results))
    ax.bar(x, [np.nanmean(r["poisson_floor_rrmse"]) for r in results], width, color="lightgray",
           label="Poisson floor")
    for i, n in enumerate(names):
        vals = [next((m["rrmse_mean"] for m in r["models"] if m["name"] == n), np.nan) for r in results]
        ax.bar(x + (i + 1) * width, vals, width, label=n)
    ax.set_xticks(x + 0.4, [f"{r['trace'].replace('SYNTHETIC-', 'SYN-')}\n{r['window_s']:g}s"
                            for r in results], fontsize=7)
    ax.set_ylabel("mean per-type RRMSE (held-out tail)")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-lstm", action="store_true")
    ap.add_argument("--settings", default="", help="only these SETTINGS rows (comma-separated indices)")
    args = ap.parse_args(argv)
    with_lstm = not args.no_lstm and importlib.util.find_spec("torch") is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    chosen = [SETTINGS[int(i)] for i in args.settings.split(",")] if args.settings else SETTINGS
    for spec, window in chosen:
        results.append(one(spec, window, args.seed, with_lstm))
        print(f"{spec} {window}s done in {results[-1]['wall_s']:.1f} s", flush=True)
    meta = {"git_revision": git_revision(), "machine": platform.machine(), "seed": args.seed,
            "lstm": with_lstm, "train_frac": 0.7, "types": 4}
    rows = verdicts(results)
    (out / "forecast_bench.json").write_text(json.dumps({"meta": meta, "results": results,
                                                         "verdicts": rows}, indent=2))
    (out / "forecast_bench.md").write_text(
        "One-window-ahead forecasts on the held-out last 30% (best in bold). SYNTHETIC rows come from "
        "the generator, not from a real trace.\n\nMean over types of the per-type RRMSE:\n\n"
        + markdown(results) + "\n\nRRMSE of the total rate (all types summed):\n\n"
        + markdown(results, "rrmse_total")
        + "\n\nThe LSTM against the best baseline (signal: the best baseline "
        f"above {SIGNAL_OVER_FLOOR}x the floor):\n\n" + verdict_markdown(rows) + "\n")
    plot(results, out / "forecast_bench.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
