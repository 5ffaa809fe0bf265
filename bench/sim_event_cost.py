"""The simulator's CPU cost per event against the fleet size, with runs long enough to amortise set-up.

``bench/scale_bench.py``'s replica sweep keeps the requests per replica constant and small, so its
small fleets run a few hundred events, whose cost is mostly fixed set-up and the step timer's first
misses (a fixed cost per distinct step shape), and its large fleets spend much of their run filling up
from idle. Here every case serves at least ``--min-requests`` requests and at least
``--requests-per-replica`` per replica (past the start-up), at the same load per replica (Llama-2-70B's
default plan on ``replicas / 2`` nodes of 8 H100s, the conv trace tiled and replayed at 60% of the
plan's predicted capacity, as scale_bench). Each case runs in its own process: once
cold (what a user runs: its CPU time, the misses' share of it) and then ``--warm-repeats`` times on the
warm step-timer cache (no misses at all: the event loop alone; the minimum is reported). With
``--baseline-src DIR`` each case also runs on that source tree, alternately, ``--rounds`` times (the
minimum per tree; pairs in one run are what a shared machine can compare; the trees take turns going
first), and the event counts, P99 and in-system area must agree.

    python bench/sim_event_cost.py [--replicas 2,8,32,128,512,1024] [--min-requests 20000]
        [--requests-per-replica 200]
        [--baseline-src /path/to/old/src] [--rounds 2] [--name sim_event_cost]

Writes bench/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from oserve.common.provenance import git_revision  # noqa: E402
from scale_bench import LOAD_OF_CAPACITY, MODEL, tiled_trace  # noqa: E402


def one_case(replicas: int, requests: int, warm_repeats: int, cluster: str | None = None) -> dict:
    """One fleet size in this process: a cold run, then warm runs on its step-timer cache."""
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.sim.config import SimConfig
    from oserve.sim.experiment import PreparedTrace, plan_for, prepare_trace, simulate_at

    cost = CostModel(load_models().get(MODEL))
    base = prepare_trace("azure-conv", cost)
    # the default plan runs Llama-2-70B as TP4: two replicas per 8-GPU node
    cluster = cluster or f"{max(1, replicas // 2)}x8xH100"
    plan = plan_for(parse_cluster(cluster), cost, base, "default")
    trace = tiled_trace(requests, base.trace)
    rate_rps = LOAD_OF_CAPACITY * plan.demand_scale * base.trace.mean_rate_rps
    trace = trace.scaled(rate_rps / trace.mean_rate_rps)
    prepared = PreparedTrace(trace, base.types, base.types.stats(trace), 0)
    timers: dict = {}
    c0 = time.process_time()
    res = simulate_at(plan, prepared, cost, SimConfig(), timers=timers)
    cold_s = time.process_time() - c0
    warm = []
    for _ in range(warm_repeats):
        c0 = time.process_time()
        again = simulate_at(plan, prepared, cost, SimConfig(), timers=timers)
        warm.append(time.process_time() - c0)
        if again.num_events != res.num_events:
            raise RuntimeError("a warm run differs from the cold one (simulator bug)")
    stats = res.meta["step_timer"]
    ev = res.num_events
    return {"replicas": len(plan.replicas), "requests": requests, "events": ev,
            "p99_e2e_s": res.summary()["p99_e2e_s"], "in_system_area": res.in_system_area,
            "cold_cpu_s": round(cold_s, 4), "miss_cpu_s": round(stats["miss_s"], 4),
            "hit_rate": stats["hit_rate"], "warm_cpu_s": round(min(warm), 4) if warm else None,
            "cold_us_per_event": round(1e6 * cold_s / ev, 2),
            "cold_us_per_event_without_misses": round(1e6 * (cold_s - stats["miss_s"]) / ev, 2),
            "warm_us_per_event": round(1e6 * min(warm) / ev, 2) if warm else None,
            "cold_requests_per_cpu_s": round(requests / cold_s),
            "warm_requests_per_cpu_s": round(requests / min(warm)) if warm else None}


def _in_child(args: list[str], src: str | None) -> dict:
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best(rows: list[dict]) -> dict:
    """The fastest cold and warm run of repeated measurements of one case (their minima)."""
    out = dict(min(rows, key=lambda r: r["cold_cpu_s"]))
    warm = min(rows, key=lambda r: r["warm_cpu_s"] or float("inf"))
    for k in ("warm_cpu_s", "warm_us_per_event", "warm_requests_per_cpu_s"):
        out[k] = warm[k]
    return out


def sweep(replicas: list[int], min_requests: int, per_replica: int, warm_repeats: int,
          baseline: str | None, rounds: int, cluster: str | None = None) -> list[dict]:
    rows = []
    for r in replicas:
        requests = max(min_requests, per_replica * r)
        args = ["--case", json.dumps({"replicas": r, "requests": requests, "warm_repeats": warm_repeats,
                                      "cluster": cluster})]
        new, old = [], []
        for k in range(rounds):
            # the trees take turns going first: on a shared machine the first of a pair may meet
            # another load than the second
            if baseline and k % 2:
                old.append(_in_child(args, baseline))
            new.append(_in_child(args, None))
            if baseline and not k % 2:
                old.append(_in_child(args, baseline))
        row = _best(new)
        if baseline:
            b = _best(old)
            row["baseline"] = {k: b[k] for k in ("cold_cpu_s", "warm_cpu_s", "miss_cpu_s",
                                                  "cold_us_per_event", "warm_us_per_event", "events",
                                                  "p99_e2e_s")}
            row["same_events_p99_area"] = ((b["events"], b["p99_e2e_s"], b["in_system_area"])
                                           == (row["events"], row["p99_e2e_s"], row["in_system_area"]))
            row["cold_ratio"] = round(row["cold_cpu_s"] / b["cold_cpu_s"], 3)
            row["warm_ratio"] = (round(row["warm_cpu_s"] / b["warm_cpu_s"], 3) if warm_repeats
                                 else None)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def spread(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key)]
    return round(max(values) / min(values), 3) if values else None


def markdown(report: dict) -> str:
    rows = report["rows"]
    has_base = any("baseline" in r for r in rows)
    lines = [f"Measured {report['utc']} on {report['machine']} ({report['cpus']} cores, load average "
             f"{report['load_avg_before'][0]:.1f} before, {report['load_avg_after'][0]:.1f} after: CPU "
             f"seconds and paired ratios only), git {report['git_revision']}.", "",
             f"`{report['command']}`", "",
             "| replicas | requests | events | cold CPU us/event | without misses | warm CPU us/event "
             "| cold requests/CPU s | warm requests/CPU s | hit rate |"
             + (" cold ratio to baseline | warm ratio | same events, P99, area |" if has_base else ""),
             "|" + "---|" * (12 if has_base else 9)]
    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in rows:
        line = (f"| {r['replicas']:,} | {r['requests']:,} | {r['events']:,} | {r['cold_us_per_event']:.1f} | "
                f"{r['cold_us_per_event_without_misses']:.1f} | {num(r['warm_us_per_event'], '.1f')} | "
                f"{r['cold_requests_per_cpu_s']:,} | {num(r['warm_requests_per_cpu_s'], ',')} | "
                f"{r['hit_rate']:.1%} |")
        if has_base:
            line += (f" {r['cold_ratio']:.2f} | {num(r['warm_ratio'], '.2f')} | "
                     f"{'yes' if r['same_events_p99_area'] else 'NO'} |")
        lines.append(line)
    s = report["spread"]
    lines += ["", f"Largest over smallest per-event cost across the fleet sizes: cold {s['cold']:.2f}x, "
              f"cold without misses {s['cold_without_misses']:.2f}x, warm {num(s['warm'], '.2f')}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="2,8,32,128,512,1024")
    ap.add_argument("--min-requests", type=int, default=20_000, help="fewest requests of a case")
    ap.add_argument("--requests-per-replica", type=int, default=200, help="fewest requests per replica")
    ap.add_argument("--cluster", default=None, help="one cluster instead of the sweep (e.g. 32x8xH100)")
    ap.add_argument("--warm-repeats", type=int, default=2)
    ap.add_argument("--baseline-src", default=None, help="another source tree, run alternately")
    ap.add_argument("--rounds", type=int, default=1, help="repeats of each case per tree (minimum kept)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="sim_event_cost")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one child run
    args = ap.parse_args(argv)
    if args.case:
        spec = json.loads(args.case)
        print(json.dumps(one_case(spec["replicas"], spec["requests"], spec["warm_repeats"],
                                  spec.get("cluster"))))
        return 0
    report = {"utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_avg_before": os.getloadavg(), "git_revision": git_revision(),
              "command": " ".join(["python bench/sim_event_cost.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    sizes = [0] if args.cluster else [int(x) for x in args.replicas.split(",")]
    report["rows"] = sweep(sizes, args.min_requests, args.requests_per_replica, args.warm_repeats,
                           args.baseline_src, args.rounds, args.cluster)
    report["spread"] = {"cold": spread(report["rows"], "cold_us_per_event"),
                        "cold_without_misses": spread(report["rows"], "cold_us_per_event_without_misses"),
                        "warm": spread(report["rows"], "warm_us_per_event")}
    report["load_avg_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
