"""What ``oserve simulate-adaptive`` reports: ratios to oserve's switching, the table, the outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from oserve.sim.adaptive_experiment import AdaptiveSetup


def ratios(modes: dict) -> dict:
    """P99 end-to-end latency and throughput of each mode relative to oserve's switching (p2p)."""
    ref = modes.get("switch-p2p", {}).get("summary")
    if not ref or not ref.get("p99_e2e_s"):
        return {}
    return {m: {"p99_e2e_vs_switch_p2p": (r["summary"]["p99_e2e_s"] or float("nan")) / ref["p99_e2e_s"],
                "throughput_vs_switch_p2p": r["summary"]["throughput_rps"] / ref["throughput_rps"]}
            for m, r in modes.items()}


def table(report: dict) -> str:
    synth = " (SYNTHETIC)" if report["synthetic"] else ""
    lines = [f"{report['model']} on {report['cluster']}, trace {report['trace']}{synth}, "
             f"{report['requests']} requests", ""]
    head = (f"{'mode':<20}{'switches':>9}{'P50 e2e':>9}{'P99 e2e':>9}{'P99 TTFT':>9}{'req/s':>8}"
            f"{'done':>8}{'SLO att':>9}{'GPU-h':>8}  initial deployment")
    lines += [head, "-" * len(head)]
    for m, r in report["modes"].items():
        s = r["summary"]
        att = r.get("attainment", {}).get("overall")
        lines.append(f"{m:<20}{r['num_switches']:>9}{_f(s['p50_e2e_s'])}{_f(s['p99_e2e_s'])}"
                     f"{_f(s['p99_ttft_s'])}{s['throughput_rps']:8.2f}{s['completed']:>8}{_f(att)}"
                     f"{r.get('gpu_hours', 0.0):8.2f}  {r['deployment']}")
    return "\n".join(lines)


def _f(v) -> str:
    return f"{'-':>9}" if v is None else f"{v:9.2f}"


def write_outputs(out: Path, report: dict, results: dict, setup: AdaptiveSetup) -> None:
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


__all__ = ["ratios", "table", "write_outputs"]
