"""End-to-end: static deployments against switching ones on workloads whose request mix shifts.

Scenarios (each simulated with the discrete-event simulator, step times from the calibrated cost model):
  diurnal13  Llama-2-13B on 2x8 H100, a SYNTHETIC 30-minute "day" (conversation and code sources in
             opposite phase: steady total, swinging mix), about 85% of the static plan's capacity.
  phases70   Llama-2-70B on 4x8 H100, the Azure conversation hour then the code hour, replayed 8x faster.
  phases13   Llama-2-13B on 2x8 H100, the same phases replayed 12x faster.
  longshort70  Llama-2-70B on 4x8 H100: 10 minutes of the Azure requests (both services) with prompts over
             1500 tokens, then 10 minutes of the others, each replayed (looped when shorter) at 75% /
             90% of the capacity of the plan for that phase (the phases want different deployments).
Modes: static-homogeneous, static-oserve (both planned for the whole trace's mean rates), switch-reload,
switch-p2p (closed loop: EWMA forecast, cost-aware policy) and the ablations blind-reload / blind-p2p
(switch whenever the re-plan differs). Writes bench/results/adaptive/<scenario>/ and a summary
bench/results/adaptive_summary.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.forecast.synthetic import load_any_trace
from oserve.planner.api import make_plan
from oserve.sim.adaptive_experiment import ABLATIONS, MODES, AdaptiveSetup, compare
from oserve.sim.adaptive_plots import plot_adaptive
from oserve.sim.adaptive_report import ratios as _ratios
from oserve.sim.experiment import prepare_trace
from oserve.switching import IoProfile, SwitchParams
from oserve.workload import Trace, fit_request_types, load_trace

SCENARIOS = {
    "longshort70": ("llama-2-70b", "4x8xH100", "long-short", 1.0, 30.0),
    "diurnal13": ("llama-2-13b", "2x8xH100", "synthetic-diurnal:0.5:48", 1.0, 30.0),
    "phases70": ("llama-2-70b", "4x8xH100", "phases:azure-conv,azure-code", 8.0, 30.0),
    "phases13": ("llama-2-13b", "2x8xH100", "phases:azure-conv,azure-code", 12.0, 30.0),
}


def long_short(cost, cluster, phase_s: float = 600.0, loads=(0.75, 0.9), threshold_tokens: int = 1500):
    """Long-prompt Azure requests, then short-prompt ones, each rescaled to a load of its own plan."""
    mix = load_trace("azure-mix")
    types = fit_request_types(mix, 4, 0)
    long = mix.input_tokens > threshold_tokens
    parts = []
    for i, (mask, load) in enumerate(zip((long, ~long), loads)):
        part = Trace(mix.arrival_s[mask], mix.input_tokens[mask], mix.output_tokens[mask])
        plan = make_plan(cluster, cost.model, types.stats(part), "oserve", cost)
        part = part.scaled(load * plan.demand_scale)
        span = float(part.arrival_s[-1]) + 1e-3
        copies = [Trace(part.arrival_s + j * span, part.input_tokens, part.output_tokens)
                  for j in range(int(phase_s // span) + 1)]  # replay the hour again if it is shorter
        part = Trace.merge(copies).window(0.0, phase_s)
        parts.append(Trace(part.arrival_s + i * phase_s, part.input_tokens, part.output_tokens))
    merged = Trace.merge(parts)
    return Trace(merged.arrival_s, merged.input_tokens, merged.output_tokens,
                 f"azure-mix prompts>{threshold_tokens} then <={threshold_tokens} (rescaled)")


REVISION_AT_START = git_revision()  # the code this process loaded, whatever HEAD becomes meanwhile


def run(name: str, out: Path, modes, redispatch: bool = True, window_s: float = 0.0) -> dict:
    model, cluster_spec, trace_spec, scale, interval_s = SCENARIOS[name]
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(cluster_spec)
    trace = long_short(cost, cluster) if trace_spec == "long-short" else load_any_trace(trace_spec, 0)
    if scale != 1.0:
        trace = trace.scaled(scale)
    if window_s:
        trace = trace.window(0.0, window_s)
    prepared = prepare_trace(trace, cost, 4, 0)
    setup = AdaptiveSetup(cluster, cost, prepared, switch=SwitchParams(horizon_s=600, min_gap_s=120),
                          control_interval_s=interval_s, warmup_s=120.0, forecaster="ewma",
                          io=IoProfile.h100(), redispatch=redispatch)
    t0 = time.perf_counter()
    results = compare(setup, modes)
    modes_doc = {m: {k: v for k, v in r.items() if k not in ("result", "timeline")}
                 for m, r in results.items()}
    doc = {"scenario": name, "model": model, "cluster": cluster_spec, "trace": prepared.trace.name,
           "synthetic": bool(prepared.trace.meta.get("synthetic")), "rate_scale": scale,
           "requests": len(prepared.trace), "control_interval_s": interval_s, "redispatch": redispatch,
           "modes": modes_doc,
           "ratios": _ratios(modes_doc), "wall_s": time.perf_counter() - t0,
           "git_revision": REVISION_AT_START}
    d = out / "adaptive" / (name if redispatch else f"{name}_no_redispatch")
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    timelines = {m: r["timeline"] for m, r in results.items() if "timeline" in r}
    for mode, timeline in timelines.items():
        (d / f"timeline_{mode}.json").write_text(json.dumps([vars(r) for r in timeline], indent=1))
    if timelines:
        plot_adaptive(d / "adaptive.png", timelines, prepared.types.names(),
                      f"{model} on {cluster_spec}, {prepared.trace.name}")
    return doc


def markdown(docs) -> str:
    lines = ["| scenario | mode | switches | P50 e2e (s) | P99 e2e (s) | P99 TTFT (s) | req/s | "
             "P99 / switch-p2p | throughput / switch-p2p |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for doc in docs:
        for m, r in doc["modes"].items():
            s = r["summary"]
            ratio = doc["ratios"].get(m, {})
            syn = " (SYNTHETIC)" if doc["synthetic"] else ""
            lines.append(f"| {doc['scenario']}{syn} | {m} | {r['num_switches']} | {s['p50_e2e_s']:.2f} | "
                         f"{s['p99_e2e_s']:.2f} | {s['p99_ttft_s']:.2f} | {s['throughput_rps']:.2f} | "
                         f"{ratio.get('p99_e2e_vs_switch_p2p', float('nan')):.3f} | "
                         f"{ratio.get('throughput_vs_switch_p2p', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--modes", default=",".join(MODES + ABLATIONS))
    ap.add_argument("--duration-s", type=float, default=0.0,
                    help="simulate only the first seconds of each scenario (0: all; for smoke tests)")
    ap.add_argument("--no-redispatch", action="store_true",
                    help="between switches keep the deployed plan's dispatch (summary file suffixed)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = []
    stem = "adaptive_summary" + ("_no_redispatch" if args.no_redispatch else "")
    for name in args.scenarios.split(","):
        docs.append(run(name, out, args.modes.split(","), not args.no_redispatch, args.duration_s))
        print(f"{name}: {docs[-1]['wall_s']:.0f} s", flush=True)
        (out / f"{stem}.json").write_text(json.dumps(docs, indent=2, default=str))
        (out / f"{stem}.md").write_text(markdown(docs) + "\n")
    print(markdown(docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
