"""What ``oserve simulate`` reports: the JSON keys, the outputs it writes and the table it prints."""

from __future__ import annotations

import json
from pathlib import Path

JSON_KEYS = ("p99_e2e_s", "p50_e2e_s", "p90_e2e_s", "p99_ttft_s", "p50_ttft_s", "p99_tpot_s",
             "throughput_rps", "throughput_tok_s", "completed", "dropped", "dropped_by_reason",
             "slo_attainment", "slo_attainment_per_type", "preemptions", "mean_utilisation", "offered_rps",
             "sim_wall_s", "replicas")


def results_by_planner(summaries: dict, plans: dict, scales: list[float]) -> dict:
    """Per planner: the first scale's metrics at the top level, every scale under ``by_rate_scale``."""
    first = scales[0]
    return {name: {**{k: by[first].get(k) for k in JSON_KEYS},
                   "deployment": plans[name].describe(),
                   "objective": plans[name].objective,
                   "predicted_goodput_scale": plans[name].predicted_goodput_scale,
                   "planned_simulated_goodput_scale": plans[name].simulated_goodput_scale,
                   "planner_seconds": plans[name].planner_seconds,
                   "by_rate_scale": {str(s): {k: by[s].get(k) for k in JSON_KEYS} for s in scales}}
            for name, by in summaries.items()}


def write_outputs(out: Path, report: dict, results, summaries, scales, plans) -> None:
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


def table(report: dict, summaries, scales) -> str:
    lines = [f"{report['model']} on {report['cluster']}, trace {report['trace']} "
             f"({report['requests']} requests, {report['requests_shortened_to_context']} shortened "
             f"to the context window)", ""]
    head = (f"{'planner':<17} {'x':>5} {'deployment':<44} {'P50 e2e':>8} {'P99 e2e':>8} "
            f"{'P99 TTFT':>8} {'P99 TPOT':>8} {'req/s':>7} {'SLO':>6} {'dropped':>7}")
    lines += [head, "-" * len(head)]
    for name, by in summaries.items():
        dep = report["results"][name]["deployment"]
        for s in scales:
            m = by[s]
            slo = "" if m["slo_attainment"] is None else f"{m['slo_attainment']:.1%}"
            lines.append(f"{name:<17} {s:>5g} {dep[:44]:<44} {_s(m['p50_e2e_s'])} {_s(m['p99_e2e_s'])} "
                         f"{_s(m['p99_ttft_s'])} {_s(m['p99_tpot_s'], 3)} {m['throughput_rps']:7.2f} "
                         f"{slo:>6} {m['dropped']:>7}")
    return "\n".join(lines)


def goodput_table(report: dict) -> str:
    lines = ["", f"SLO goodput ({report['config']['slo']}): highest rate scale at which every type "
             "reaches the target", f"{'planner':<18} {'scale':>6}  attainment per type at that scale"]
    for name, r in report["results"].items():
        att = r["attainment_at_goodput"]
        per = "  ".join("-" if a is None else f"{a:.1%}" for a in att["per_type"]) if att else "-"
        lines.append(f"{name:<18} {r['goodput_scale']:6.3f}  {per}")
    return "\n".join(lines)


def _s(v: float | None, digits: int = 2) -> str:
    return f"{'-':>8}" if v is None else f"{v:8.{digits}f}"


__all__ = ["JSON_KEYS", "goodput_table", "results_by_planner", "table", "write_outputs"]
