"""Temporal adaptation under an SLO: static plans against the goodput-priced switching loop and the elastic
loop, simulated (discrete-event simulator, step times from the calibrated cost model).

Scenarios (traces labelled as what they are; REAL-DRIFT = windows of the real Azure traces stitched at
their real arrival processes, ``oserve.workload.drift``; SYNTHETIC = the generated diurnal day):

  convcode70   Llama-2-70B on 2x8 H100, REAL-DRIFT ``real-drift:conv-code`` (20 min of the conversation
               trace, then 20 min of the code trace, at their real arrival processes). Goodput search.
  stable70     Llama-2-70B on 2x8 H100, one real hour of the code trace (no stitching). Goodput search.
  diurnal13    Llama-2-13B on 2x8 H100, SYNTHETIC 30-minute day. Elastic against a peak-sized static fleet.
  realdiurnal13  Llama-2-13B on 2x8 H100, REAL-DRIFT ``real-drift:diurnal`` (the merged hour rising from
               0.25x to 1.25x its rate and falling back, 40 min). Elastic against a peak-sized static fleet.

SLO: loose (TTFT 2 s, TPOT 100 ms), attainment target 90% for every type. **SLO goodput** of a mode: the
highest rate scale of a time-preserving replay of the trace (``replay_at_rate``: more requests per
window, the same phases and wall time) at which every type reaches the target (bracketing by factors of
2 from the hindsight plan's predicted goodput, then bisection, at most 5 probes, so to about 10%: sized
for a 2-core machine shared with other sessions, where one probe of a loop re-plans every control
interval; modes that pass and fail at the same probes share them, so ratios in one run are paired).
Elastic scenarios run at the trace's own rate and report GPU-hours and attainment. Per scenario:
``bench/results/adaptive/<scenario>.json`` (skipped when present; ``--force`` reruns) with the timeline
and a deployment-over-time plot ``<scenario>.png``; ``--report`` aggregates them into
``bench/results/adaptive_summary.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.forecast.synthetic import load_any_trace
from oserve.sim.adaptive_experiment import (
    AdaptiveSetup,
    attainment_of,
    compare,
    mode_goodput,
    rate_replayed,
    run_mode,
    static_plan,
)
from oserve.sim.adaptive_plots import plot_adaptive
from oserve.sim.experiment import prepare_trace
from oserve.sim.metrics import per_type_latency
from oserve.switching import IoProfile, SwitchParams

GOODPUT_MODES = ("static-initial", "static-oserve", "switch-reload", "switch-p2p", "blind-p2p")
ELASTIC_MODES = ("static-peak", "elastic")
SCENARIOS = {  # model, cluster, trace, kind, modes
    "convcode70": ("llama-2-70b", "2x8xH100", "real-drift:conv-code", "goodput", GOODPUT_MODES),
    "stable70": ("llama-2-70b", "2x8xH100", "stitch:azure-code/0-3600", "goodput",
                 ("static-initial", "switch-p2p")),
    "diurnal13": ("llama-2-13b", "2x8xH100", "synthetic-diurnal:0.5:12", "elastic", ELASTIC_MODES),
    "realdiurnal13": ("llama-2-13b", "2x8xH100", "real-drift:diurnal", "elastic", ELASTIC_MODES),
}
MAX_PROBES = 5
REVISION_AT_START = git_revision()  # the code this process loaded, whatever HEAD becomes meanwhile


def _setup(name: str, duration_s: float = 0.0) -> AdaptiveSetup:
    model, cluster_spec, trace_spec, _kind, _modes = SCENARIOS[name]
    cost = CostModel(load_models().get(model))
    trace = load_any_trace(trace_spec, 0)
    prepared = prepare_trace(trace.window(0.0, duration_s) if duration_s else trace, cost, 4, 0)
    return AdaptiveSetup(parse_cluster(cluster_spec), cost, prepared,
                         switch=SwitchParams(horizon_s=600, min_gap_s=120), control_interval_s=60.0,
                         warmup_s=120.0, forecaster="ewma", io=IoProfile.h100())


def rate_profile(setup: AdaptiveSetup, peak_gpus: int) -> dict:
    """How much a fleet sized to the traffic could save: the total rate per control window, and the
    GPU-hours of a fleet resized every window, at no switch cost, to the peak-sized fleet's GPUs times
    that window's share of the peak window's rate (rounded up). An estimate defined by the trace and the
    peak-sized fleet alone, not by the loop; not a strict bound (capacity is not proportional to GPUs:
    another configuration, or a fleet pooling fewer replicas, can carry more per GPU)."""
    p = setup.prepared
    arrivals = p.trace.arrival_s
    width = setup.control_interval_s
    ends = np.arange(width, float(arrivals[-1]) + width, width)
    counts = [np.searchsorted(arrivals, e) - np.searchsorted(arrivals, e - width) for e in ends]
    totals = np.asarray(counts, dtype=float) / width
    gpus = np.ceil(peak_gpus * totals / totals.max() - 1e-9)
    ideal = float(gpus.sum()) * width / 3600.0
    return {"peak_window_rps": float(totals.max()), "mean_window_rps": float(totals.mean()),
            "trough_window_rps": float(totals.min()), "peak_gpus": peak_gpus, "ideal_gpu_hours": ideal,
            "ideal_ratio": peak_gpus * len(ends) * width / 3600.0 / ideal}


def _entry(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("result", "timeline")}


def run(name: str, out: Path, duration_s: float = 0.0, modes: tuple[str, ...] = ()) -> dict:
    model, cluster_spec, _spec, kind, all_modes = SCENARIOS[name]
    modes = modes or all_modes
    setup = _setup(name, duration_s)
    t0 = time.perf_counter()
    doc: dict = {"scenario": name, "model": model, "cluster": cluster_spec,
                 "trace": setup.prepared.trace.name,
                 "synthetic": bool(setup.prepared.trace.meta.get("synthetic")),
                 "real_drift": bool(setup.prepared.trace.meta.get("real_drift")), "kind": kind,
                 "requests": len(setup.prepared.trace), "slo": setup.slo.describe(),
                 "attainment_target": setup.slo.attainment, "control_interval_s": setup.control_interval_s,
                 "git_revision": REVISION_AT_START, "command": sys.argv, "modes": {}}
    timelines = {}
    if kind == "elastic":
        for mode, r in compare(setup, modes).items():
            doc["modes"][mode] = _entry(r)
            timelines[mode] = r.get("timeline") or []
        if "static-peak" in doc["modes"]:
            doc["rate_profile"] = rate_profile(setup, doc["modes"]["static-peak"]["num_gpus_initial"])
    else:
        start = max(static_plan(setup, "oserve").predicted_goodput_scale or 1.0, 0.25)
        for mode in modes:
            t1 = time.perf_counter()
            res, best = mode_goodput(setup, mode, start_scale=start, rel_tol=0.1, max_probes=MAX_PROBES)
            doc["modes"][mode] = {"goodput_scale": res.scale, "wall_s": time.perf_counter() - t1,
                                  "probes": [{"scale": p.scale, "per_type": list(p.attainment.per_type),
                                              "ok": p.ok} for p in res.probes],
                                  **{k: v for k, v in best.items() if k != "timeline"}}
            timelines[mode] = best.get("timeline") or []
            print(f"  {name} {mode}: goodput x{res.scale:.3f} ({time.perf_counter() - t1:.0f} s)", flush=True)
    doc["wall_s"] = time.perf_counter() - t0
    doc["timelines"] = {m: [vars(x) for x in tl] for m, tl in timelines.items()}
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(name, modes if modes != all_modes else ())
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    shown = {m: tl for m, tl in timelines.items() if tl}
    if shown:
        plot_adaptive(out / f"{stem}.png", shown, setup.prepared.types.names(),
                      f"{model} on {cluster_spec}, {setup.prepared.trace.name}")
    return doc


def probe(name: str, out: Path, modes: tuple[str, ...], scales: tuple[float, ...],
          duration_s: float = 0.0) -> dict:
    """The modes at fixed rate scales (paired probes: every mode sees the same replays), instead of the
    goodput search; written to ``<scenario>__probes__<modes>.json`` after every probe, so a run cut
    short keeps what it measured."""
    model, cluster_spec, _spec, _kind, all_modes = SCENARIOS[name]
    modes = modes or all_modes
    setup = _setup(name, duration_s)
    path = out / f"{name}__probes{''.join(f'__{m}' for m in modes)}.json"
    doc: dict = {"scenario": name, "model": model, "cluster": cluster_spec,
                 "trace": setup.prepared.trace.name, "slo": setup.slo.describe(),
                 "attainment_target": setup.slo.attainment,
                 "git_revision": REVISION_AT_START, "command": sys.argv, "probes": {m: [] for m in modes}}
    out.mkdir(parents=True, exist_ok=True)
    for mode in modes:
        for scale in scales:
            t1 = time.perf_counter()
            scaled = rate_replayed(setup, scale)
            r = run_mode(scaled, mode)
            att = attainment_of(scaled, r["result"])
            ok = bool(all(a is None or a >= setup.slo.attainment for a in att.per_type))
            doc["probes"][mode].append({
                "scale": scale, "ok": ok, "per_type": list(att.per_type),
                "per_type_p99": per_type_latency(r["result"], setup.prepared.types.k),
                "wall_s": time.perf_counter() - t1,
                **{k: v for k, v in r.items() if k not in ("result", "timeline")},
                "timeline": [vars(x) for x in r.get("timeline") or []]})
            path.write_text(json.dumps(doc, indent=1, default=str))
            print(f"  {name} {mode} x{scale:g}: {'pass' if ok else 'fail'} "
                  f"{[round(a, 3) for a in att.per_type if a is not None]} switches {r['num_switches']} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
    return doc


def probe_docs(out: Path) -> list[dict]:
    """The ``--scales`` files, one per scenario, the modes of all its files merged."""
    by_name: dict[str, dict] = {}
    for path in sorted(out.glob("*__probes__*.json")):
        doc = json.loads(path.read_text())
        merged = by_name.setdefault(doc["scenario"], {**doc, "probes": {}})
        merged["probes"].update(doc["probes"])
    return list(by_name.values())


def probe_markdown(docs: list[dict]) -> str:
    lines = ["| scenario | mode | rate scale | passes | attainment per type | switches | "
             "time switching (s) | GPU-hours | per-type P99 TTFT (s) | per-type P99 TPOT (ms) |",
             "|---|---|---:|---|---|---:|---:|---:|---|---|"]
    for doc in docs:
        for mode, probes in doc["probes"].items():
            for p in sorted(probes, key=lambda p: p["scale"]):
                att = ", ".join(f"{a:.3f}" for a in p["per_type"] if a is not None)
                p99 = p["per_type_p99"]
                ttft = ", ".join(f"{x['p99_ttft_s']:.2f}" for x in p99)
                tpot = ", ".join(f"{1e3 * (x.get('p99_tpot_s') or float('nan')):.0f}" for x in p99)
                ok = "yes" if p["ok"] else "no"
                lines.append(f"| {doc['scenario']} | {mode} | {p['scale']:.3f} | {ok} | {att} | "
                             f"{p['num_switches']} | {p['switching_s']:.0f} | {p['gpu_hours']:.2f} | "
                             f"{ttft} | {tpot} |")
    return "\n".join(lines)


def plot_probes(out: Path, docs: list[dict]) -> None:
    """Per scenario, the deployment over time of each loop mode at its highest passing probe (else its
    lowest): ``<scenario>__probes.png``."""
    from types import SimpleNamespace

    for doc in docs:
        shown = {}
        for mode, probes in doc["probes"].items():
            loops = [p for p in probes if p.get("timeline")]
            if not loops:
                continue
            passing = [p for p in loops if p["ok"]]
            best = max(passing, key=lambda p: p["scale"]) if passing else min(loops, key=lambda p: p["scale"])
            shown[f"{mode} x{best['scale']:.2f}"] = [SimpleNamespace(**r) for r in best["timeline"]]
        if shown:
            names = [f"T{k}" for k in range(len(next(iter(shown.values()))[0].observed_rps))]
            plot_adaptive(out / f"{doc['scenario']}__probes.png", shown, names,
                          f"{doc['model']} on {doc['cluster']}, {doc['trace']}")


def _stem(name: str, modes: tuple[str, ...]) -> str:
    """A scenario's file name; a run of some of its modes gets its own (``--report`` merges them)."""
    return name + "".join(f"__{m}" for m in modes)


def _merged(out: Path, name: str) -> dict | None:
    docs = [json.loads(p.read_text()) for p in sorted(out.glob(f"{name}*.json"))
            if (p.stem == name or p.stem.startswith(name + "__")) and "__probes" not in p.stem]
    if not docs:
        return None
    doc = docs[0]
    for other in docs[1:]:
        doc["modes"].update(other["modes"])
    order = SCENARIOS[name][4]
    doc["modes"] = {m: doc["modes"][m] for m in order if m in doc["modes"]}
    doc.pop("timelines", None)
    return doc


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a and b else float("nan")


def markdown(docs: list[dict]) -> str:
    lines = ["| scenario | mode | SLO goodput (x rate) | vs static-initial | switches | time switching (s) | "
             "GPU-hours | per-type P99 TTFT (s) | per-type P99 TPOT (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for doc in docs:
        label = doc["scenario"] + (" (SYNTHETIC)" if doc["synthetic"] else
                                   " (REAL-DRIFT)" if doc["real_drift"] else " (real)")
        ref = doc["modes"].get("static-initial", {}).get("goodput_scale")
        for m, r in doc["modes"].items():
            p99 = r.get("per_type_p99") or []
            ttft = ", ".join(f"{x.get('p99_ttft_s', float('nan')):.2f}" for x in p99)
            tpot = ", ".join(f"{1e3 * (x.get('p99_tpot_s') or float('nan')):.0f}" for x in p99)
            gp = r.get("goodput_scale")
            lines.append(f"| {label} | {m} | {'-' if gp is None else f'{gp:.3f}'} | "
                         f"{_ratio(gp, ref):.2f} | {r.get('num_switches', 0)} | "
                         f"{r.get('switching_s', 0.0):.0f} | {r.get('gpu_hours', float('nan')):.2f} | "
                         f"{ttft} | {tpot} |")
    lines += ["", "| scenario | mode | GPU-hours | attainment per type | meets target | "
              "peak-sized / elastic GPU-hours |", "|---|---|---:|---|---|---:|"]
    for doc in docs:
        if doc["kind"] != "elastic":
            continue
        peak = doc["modes"].get("static-peak", {}).get("gpu_hours")
        for m, r in doc["modes"].items():
            per_type = [a for a in r["attainment"]["per_type"] if a is not None]
            att = ", ".join(f"{a:.3f}" for a in per_type)
            meets = "yes" if min(per_type) >= doc["attainment_target"] else "no"
            lines.append(f"| {doc['scenario']} | {m} | {r['gpu_hours']:.2f} | {att} | {meets} | "
                         f"{_ratio(peak, r['gpu_hours']):.2f} |")
    profiles = [d for d in docs if d.get("rate_profile")]
    if profiles:
        lines += ["", "Rate per control window, and a fleet resized every window to the peak-sized fleet's "
                  "GPUs x the window's share of the peak rate (rounded up, no switch cost):", "",
                  "| scenario | peak / mean / trough window (req/s) | peak-sized GPUs | proportional resize: "
                  "peak-sized / resized GPU-hours |", "|---|---|---:|---:|"]
        for d in profiles:
            rp = d["rate_profile"]
            lines.append(f"| {d['scenario']} | {rp['peak_window_rps']:.1f} / {rp['mean_window_rps']:.1f} / "
                         f"{rp['trough_window_rps']:.1f} | {rp['peak_gpus']} | {rp['ideal_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "adaptive"))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--force", action="store_true", help="rerun scenarios whose JSON exists")
    ap.add_argument("--report", action="store_true", help="only aggregate the scenario JSONs")
    ap.add_argument("--modes", default="", help="comma-separated subset of each scenario's modes")
    ap.add_argument("--scales", default="", help="comma-separated rate scales: probe the modes there "
                    "(paired) instead of searching each mode's goodput")
    ap.add_argument("--duration-s", type=float, default=0.0,
                    help="simulate only the first seconds of each scenario (0: all; for smoke tests)")
    args = ap.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    out = Path(args.out)
    if args.scales:
        for name in args.scenarios.split(","):
            probe(name, out, modes, tuple(float(x) for x in args.scales.split(",")), args.duration_s)
        return 0
    if not args.report:
        for name in args.scenarios.split(","):
            if (out / f"{_stem(name, modes)}.json").exists() and not args.force:
                continue
            doc = run(name, out, args.duration_s, modes)
            print(f"{name}: {doc['wall_s']:.0f} s", flush=True)
    docs = [d for d in (_merged(out, n) for n in SCENARIOS) if d is not None]
    probes = probe_docs(out)
    plot_probes(out, probes)
    for doc in probes:
        for ps in doc["probes"].values():
            for p in ps:
                p.pop("timeline", None)
    (out.parent / "adaptive_summary.json").write_text(json.dumps({"searched": docs, "probes": probes},
                                                                 indent=1, default=str))
    text = markdown(docs) + "\n\nPaired probes (`--scales`):\n\n" + probe_markdown(probes)
    (out.parent / "adaptive_summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
