"""Scale benchmark: planner time vs cluster size, trace loading, simulator throughput vs requests and
replicas, peak memory.

Writes bench/results/scale_bench.{json,md,png}:
- planner: ``make_plan`` time of the ``oserve``, ``milp`` and ``homogeneous`` planners for Llama-2-70B on
  azure-mix, from 16 to 8,192 GPUs of one type (8-GPU H100 nodes) and of four types (H100, A100-80GB,
  H200, L40S in equal parts); with ``--baseline-src DIR`` the same cases also run (one subprocess each,
  ``--baseline-timeout-s``) on another source tree, e.g. the previous release, for paired times and a
  check that the plans are identical;
- start-up: the whole ``oserve plan`` process at 16 GPUs (wall and CPU), first run and re-run;
- trace loading: a 1M-row Azure-format CSV (the bundled conv trace tiled), vectorised vs the row loop;
- simulator: simulated requests/s vs the number of requests at a fixed 256-GPU plan and load, and the
  cost per event vs the number of replicas at a constant load per replica; each run in its own
  process, whose peak RSS is reported.

With ``--baseline-src`` the start-up, the vectorised trace load and the simulations up to
``--baseline-max-requests`` also run on the other tree, each case right after the new one (pairs in one
run are what a shared machine can compare), with a check that the simulations' event counts and P99s
agree. ``--sim-rows FILE`` adds rows measured separately with ``--sim-case`` (e.g. a 10M run).

    python bench/scale_bench.py [--quick] [--max-requests N] [--baseline-src /path/to/old/src]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from oserve.common.provenance import git_revision

MODEL = "llama-2-70b"
TRACE = "azure-mix"
FOUR_TYPES = ("H100-80GB", "A100-80GB", "H200", "L40S")
FULL = {"one": (16, 64, 256, 1024, 4096, 8192), "four": (32, 128, 512, 1024, 4096, 8192),
        "requests": (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000),
        "replicas": (2, 8, 32, 128, 512, 1024)}
QUICK = {"one": (16, 512), "four": (32, 512), "requests": (2_000, 10_000), "replicas": (2, 16)}
PLANNERS = ("oserve", "milp", "homogeneous")
SIM_GPUS = 256
LOAD_OF_CAPACITY = 0.6  # simulated rate as a share of the plan's predicted capacity
REQUESTS_PER_REPLICA = 100


def cluster_spec(num_gpus: int, kinds: str) -> str:
    if kinds == "one":
        return f"{num_gpus // 8}x8xH100"
    return "+".join(f"{num_gpus // 32}x8x{t}" for t in FOUR_TYPES)


# ---------------------------------------------------------------- planner


_PLAN_CASE = """
import json, sys, time
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.planner.api import make_plan
from oserve.workload import fit_request_types, load_trace
case = json.loads(sys.argv[1])
trace = load_trace(case["trace"])
stats = fit_request_types(trace, 4, 0).stats(trace)
make_plan(parse_cluster("1x8xH100"), load_models().get(case["model"]), stats, "homogeneous")  # imports
t0, c0 = time.perf_counter(), time.process_time()
plan = make_plan(parse_cluster(case["cluster"]), load_models().get(case["model"]), stats, case["planner"])
d = plan.to_dict(); d.pop("planner_seconds")
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "plan": d}))
"""


def _plan_here(case: dict, stats) -> dict:
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.planner.api import make_plan

    t0, c0 = time.perf_counter(), time.process_time()
    plan = make_plan(parse_cluster(case["cluster"]), load_models().get(case["model"]), stats,
                     case["planner"])
    d = plan.to_dict()
    d.pop("planner_seconds")
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "plan": d}


def _plan_baseline(case: dict, src: str, timeout_s: float) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OSERVE_CACHE_DIR": "off"}
    try:
        out = subprocess.run([sys.executable, "-c", _PLAN_CASE, json.dumps(case)], env=env,
                             capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "timed_out_s": timeout_s}
    except subprocess.CalledProcessError as exc:
        return {"seconds": None, "error": exc.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def planner_section(sizes: dict, baseline: str | None, timeout_s: float,
                    baseline_max_gpus: dict[str, int]) -> list[dict]:
    from oserve.workload import fit_request_types, load_trace

    trace = load_trace(TRACE)
    stats = fit_request_types(trace, 4, 0).stats(trace)
    _plan_here({"cluster": "1x8xH100", "model": MODEL, "planner": "homogeneous"}, stats)  # imports
    rows = []
    for kinds in ("one", "four"):
        for n in sizes[kinds]:
            for planner in PLANNERS:
                case = {"trace": TRACE, "model": MODEL, "cluster": cluster_spec(n, kinds),
                        "planner": planner}
                new = _plan_here(case, stats)
                row = {"gpu_types": 1 if kinds == "one" else 4, "gpus": n, "planner": planner,
                       "seconds": round(new["seconds"], 3), "cpu_s": round(new["cpu_s"], 3),
                       "deployment": new["plan"]["deployment"], "demand_scale": new["plan"]["demand_scale"]}
                if baseline and n <= baseline_max_gpus[kinds]:
                    old = _plan_baseline(case, baseline, timeout_s)
                    row["baseline_seconds"] = None if old["seconds"] is None else round(old["seconds"], 3)
                    row["baseline_cpu_s"] = None if old["seconds"] is None else round(old["cpu_s"], 3)
                    row["baseline_note"] = ("timed out" if "timed_out_s" in old else
                                            "error" if "error" in old else "")
                    row["same_plan"] = old.get("plan") == new["plan"] if "plan" in old else None
                rows.append(row)
                print("planner", row, file=sys.stderr, flush=True)
    return rows


def _child_times(cmd: list[str], env: dict) -> dict:
    """Wall and CPU seconds of one child process (its stdout is returned too)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "stdout": done.stdout}


def startup_section(baseline: str | None = None, repeats: int = 3) -> dict:
    """The whole ``oserve plan`` process at 16 GPUs, CPU time of the child and wall time: a first run with
    an empty request-type cache, then ``repeats`` re-runs (the median is reported). With a baseline tree,
    its process runs right after each of ours, with its own cache."""
    cmd = [sys.executable, "-m", "oserve.cli.main", "plan", "--cluster", "2x8xH100", "--model", MODEL,
           "--trace", TRACE]
    trees = {"": None, **({"baseline_": baseline} if baseline else {})}
    runs: dict[str, dict[str, list[dict]]] = {"first run (empty type cache)": {}, "re-run (types cached)": {}}
    with tempfile.TemporaryDirectory() as cache_root:
        envs = {tree: {**os.environ, "OSERVE_CACHE_DIR": os.path.join(cache_root, tree or "new"),
                       **({"PYTHONPATH": src} if src else {})} for tree, src in trees.items()}
        for label, count in (("first run (empty type cache)", 1), ("re-run (types cached)", repeats)):
            for _ in range(count):
                for tree in trees:
                    runs[label].setdefault(tree, []).append(_child_times(cmd, envs[tree]))
    rows = {}
    for label, by_tree in runs.items():
        row: dict = {}
        for tree, tries in by_tree.items():
            median = sorted(tries, key=lambda r: r["cpu_s"])[len(tries) // 2]
            row.update({tree + k: median[k] for k in ("wall_s", "cpu_s")})
        if baseline:
            row["same_plan"] = _strip_seconds(by_tree[""][0]["stdout"]) == \
                _strip_seconds(by_tree["baseline_"][0]["stdout"])
        rows[label] = row
        print("startup", label, row, file=sys.stderr, flush=True)
    return rows


def _strip_seconds(text: str) -> str:
    """The printed plan without its planner time (the only line that differs between two runs)."""
    return "\n".join(line for line in text.splitlines() if "(planner " not in line)


# ---------------------------------------------------------------- trace loading


def tiled_trace(n: int, base=None):
    """``n`` requests: a trace (the bundled conv one) repeated back to back, lengths and arrival gaps."""
    from oserve.workload import load_trace
    from oserve.workload.trace import Trace

    base = base if base is not None else load_trace("azure-conv")
    copies = math.ceil(n / len(base))
    period = base.duration_s + float(np.diff(base.arrival_s).mean())
    arrival = np.concatenate([base.arrival_s + i * period for i in range(copies)])[:n]
    ins = np.tile(base.input_tokens, copies)[:n]
    outs = np.tile(base.output_tokens, copies)[:n]
    return Trace(arrival, ins, outs, f"azure-conv-tiled-{n}")


def write_azure_csv(trace, path: Path) -> None:
    start = np.datetime64("2023-11-16T18:00:00", "ns")
    stamps = start + np.round(trace.arrival_s * 1e9).astype("int64").astype("timedelta64[ns]")
    text = np.char.replace(np.datetime_as_string(stamps, unit="ns").astype(str), "T", " ")
    with path.open("w") as fh:
        fh.write("TIMESTAMP,ContextTokens,GeneratedTokens\r\n")
        fh.writelines(f"{t[:-2]},{i},{o}\r\n" for t, i, o in
                      zip(text.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist()))


_LOAD_CASE = """
import json, sys, time
from oserve.workload import load_trace
for _ in range(2):  # the second load is the one timed (the first imports and warms the page cache)
    c0, t0 = time.process_time(), time.perf_counter()
    trace = load_trace(sys.argv[1])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"rows": len(trace), "wall_s": wall, "cpu_s": cpu}))
"""


def _load_in_child(path: Path, src: str | None) -> dict:
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    done = subprocess.run([sys.executable, "-c", _LOAD_CASE, str(path)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def trace_section(num_rows: int, row_loop_rows: int, baseline: str | None = None,
                  repeats: int = 3) -> dict:
    from oserve.workload import trace as trace_mod

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("vectorised", num_rows), ("row loop", row_loop_rows)):
            path = Path(tmp) / f"azure_{n}.csv"
            if not path.exists():
                write_azure_csv(tiled_trace(n), path)
            real = trace_mod._load_csv_vectorised
            if label == "row loop":
                trace_mod._load_csv_vectorised = lambda *a: None
            try:
                c0, t0 = time.process_time(), time.perf_counter()
                loaded = trace_mod.load_trace(path)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            finally:
                trace_mod._load_csv_vectorised = real
            out[label] = {"rows": len(loaded), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                          "rows_per_s": round(len(loaded) / wall)}
            print("trace", label, out[label], file=sys.stderr, flush=True)
        if baseline:  # the vectorised load in a fresh process per tree, alternately: the median pair
            path = Path(tmp) / f"azure_{num_rows}.csv"
            pairs = [(_load_in_child(path, None), _load_in_child(path, baseline)) for _ in range(repeats)]
            new, old = sorted(pairs, key=lambda p: p[0]["cpu_s"])[len(pairs) // 2]
            out["vectorised, paired"] = {"rows": new["rows"], "wall_s": round(new["wall_s"], 3),
                                         "cpu_s": round(new["cpu_s"], 3),
                                         "rows_per_s": round(new["rows"] / new["wall_s"]),
                                         "baseline_wall_s": round(old["wall_s"], 3),
                                         "baseline_cpu_s": round(old["cpu_s"], 3)}
            print("trace paired", out["vectorised, paired"], file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------- simulator


def _sim_case(spec: dict) -> dict:
    """One simulation (run in a child process, so that its peak RSS is its own)."""
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.sim.config import SimConfig
    from oserve.sim.experiment import PreparedTrace, plan_for, prepare_trace, simulate_at

    cost = CostModel(load_models().get(MODEL))
    base = prepare_trace("azure-conv", cost)
    plan = plan_for(parse_cluster(spec["cluster"]), cost, base, "default")
    # arrivals at LOAD_OF_CAPACITY of what the plan is predicted to carry, whatever its size
    scale = LOAD_OF_CAPACITY * plan.demand_scale
    trace = tiled_trace(spec["requests"], base.trace)
    trace = trace.scaled(scale * base.trace.mean_rate_rps / trace.mean_rate_rps)
    prepared = PreparedTrace(trace, base.types, base.types.stats(trace), 0)  # the plan's types
    t0, c0 = time.perf_counter(), time.process_time()
    res = simulate_at(plan, prepared, cost, SimConfig())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"cluster": spec["cluster"], "replicas": len(plan.replicas), "requests": len(res.arrival_s),
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "events": int(res.num_events),
            "requests_per_s": round(len(res.arrival_s) / wall),
            "requests_per_cpu_s": round(len(res.arrival_s) / cpu),
            "cpu_us_per_event": round(cpu / res.num_events * 1e6, 2),
            "completed": int(res.completed.sum()), "peak_rss_mb": round(_peak_rss_mb()),
            "p99_e2e_s": res.summary()["p99_e2e_s"],
            "step_timer_hit_rate": res.meta["step_timer"]["hit_rate"],
            "step_timer_miss_cpu_s": round(res.meta["step_timer"]["miss_s"], 3),
            "reference_step_frac": res.meta.get("reference_steps", 0) / max(1, sum(r.num_steps for r in
                                                                                   res.replicas))}


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps ``ru_maxrss`` across exec (a child would report its parent's
    size at fork), so read the address space's own high-water mark where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sim_in_child(spec: dict, timeout_s: float, src: str | None = None) -> dict:
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    try:
        out = subprocess.run([sys.executable, __file__, "--sim-case", json.dumps(spec)], check=True,
                             capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "timed_out_s": timeout_s}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sim_pair(spec: dict, timeout_s: float, baseline: str | None, baseline_max: int) -> dict:
    """One case on this tree, then (when it is small enough) on the baseline tree."""
    row = _sim_in_child(spec, timeout_s)
    if baseline and spec["requests"] <= baseline_max and "timed_out_s" not in row:
        old = _sim_in_child(spec, timeout_s, baseline)
        row["baseline"] = {k: old.get(k) for k in ("wall_s", "cpu_s", "events", "p99_e2e_s", "peak_rss_mb",
                                                   "timed_out_s")}
        row["same_events_and_p99"] = (old.get("events"), old.get("p99_e2e_s")) == (row["events"],
                                                                                  row["p99_e2e_s"])
    print("sim", row, file=sys.stderr, flush=True)
    return row


def sim_section(sizes: dict, max_requests: int, timeout_s: float, per_replica: int,
                baseline: str | None = None, baseline_max: int = 0, extra_rows: list[dict] = ()) -> dict:
    by_requests = [_sim_pair({"cluster": f"{SIM_GPUS // 8}x8xH100", "requests": n}, timeout_s, baseline,
                             baseline_max) for n in sizes["requests"] if n <= max_requests]
    by_requests = sorted(by_requests + list(extra_rows), key=lambda r: r["requests"])
    by_replicas = [  # the default plan runs Llama-2-70B as TP4: two replicas per node
        _sim_pair({"cluster": f"{max(1, r // 2)}x8xH100", "requests": min(per_replica * r, max_requests)},
                  timeout_s, baseline, baseline_max) for r in sizes["replicas"]]
    return {"by_requests": by_requests, "by_replicas": by_replicas, "requests_per_replica": per_replica,
            "max_requests": max_requests, "case_timeout_s": timeout_s, "baseline_max_requests": baseline_max,
            "separately_measured_requests": [r["requests"] for r in extra_rows]}


# ---------------------------------------------------------------- report


def markdown(report: dict) -> str:
    lines = [f"Measured {report['utc']} on {report['machine']} ({report['cpus']} cores; load average "
             f"{report['load_avg_before'][0]:.1f} before, {report['load_avg_after'][0]:.1f} after: "
             "wall times on a shared, loaded machine, so CPU seconds are given beside them and ratios "
             "within one run are what count), "
             f"git {report['git_revision']}, `{report['command']}`."
             + (f" Sections not rerun come from the run of {report['reused']['utc']} "
                f"(`{report['reused']['command']}`, load {report['reused']['load_avg_before'][0]:.1f})."
                if "reused" in report else ""), "",
             f"### Planner ({MODEL}, {TRACE}; seconds of `make_plan`)", ""]
    has_base = any("baseline_seconds" in r for r in report["planner"])
    head = "| GPU types | GPUs | planner | wall s | CPU s | deployment |"
    if has_base:
        head = ("| GPU types | GPUs | planner | wall s | CPU s | baseline wall s | baseline CPU s "
                "| same plan | deployment |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["planner"]:
        if has_base:
            base, base_cpu = r.get("baseline_seconds"), r.get("baseline_cpu_s")
            note = r.get("baseline_note") or "-"
            base_txt = f"{base:.2f} | {base_cpu:.2f}" if base is not None else f"{note} | -"
            same = {True: "yes", False: "no", None: "-"}[r.get("same_plan")]
            lines.append(f"| {r['gpu_types']} | {r['gpus']} | {r['planner']} | {r['seconds']:.2f} | "
                         f"{r['cpu_s']:.2f} | {base_txt} | {same} | {r['deployment']} |")
        else:
            lines.append(f"| {r['gpu_types']} | {r['gpus']} | {r['planner']} | {r['seconds']:.2f} | "
                         f"{r['cpu_s']:.2f} | {r['deployment']} |")
    lines += ["", "### `oserve plan` process at 16 GPUs", ""]
    if any("baseline_cpu_s" in v for v in report["startup"].values()):
        lines += ["| run | wall s | CPU s | baseline wall s | baseline CPU s | CPU ratio | same plan |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {v['baseline_wall_s']:.2f} | "
                  f"{v['baseline_cpu_s']:.2f} | {v['cpu_s'] / v['baseline_cpu_s']:.2f} | "
                  f"{'yes' if v['same_plan'] else 'no'} |" for k, v in report["startup"].items()]
    else:
        lines += ["| run | wall s | CPU s |", "|---|---|---|"]
        lines += [f"| {k} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} |" for k, v in report["startup"].items()]
    lines += ["", "### Trace loading (Azure CSV)", "",
              "| loader | rows | wall s | CPU s | rows/s | paired baseline |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['rows']:,} | {v['wall_s']:.2f} | {v['cpu_s']:.2f} | {v['rows_per_s']:,} |"
              + (f" baseline: {v['baseline_wall_s']:.2f} s wall, {v['baseline_cpu_s']:.2f} CPU s, CPU ratio "
                 f"{v['cpu_s'] / v['baseline_cpu_s']:.2f} |" if "baseline_cpu_s" in v else " - |")
              for k, v in report["trace_loading"].items()]
    sim = report["simulator"]
    for key, title in (("by_requests", f"Simulator vs requests ({SIM_GPUS} GPUs, default plan, "
                                        f"{LOAD_OF_CAPACITY:.0%} of predicted capacity)"),
                       ("by_replicas", f"Simulator vs replicas ({sim['requests_per_replica']} requests per "
                                        f"replica, {LOAD_OF_CAPACITY:.0%} of predicted capacity)")):
        lines += ["", f"### {title}", "",
                  "| replicas | requests | wall s | CPU s | events | requests/CPU s | CPU us/event "
                  "| peak RSS MB | step-timer hit rate | miss CPU s | baseline (paired) |", "|" + "---|" * 11]
        for r in sim[key]:
            if "timed_out_s" in r:
                lines.append(f"| - | {r['requests']:,} | > {r['timed_out_s']:.0f} (stopped) | - | - | - "
                             "| - | - | - | - | - |")
            else:
                hit = r.get("step_timer_hit_rate")
                old = r.get("baseline")
                paired = ("-" if not old or old.get("cpu_s") is None else
                          f"{old['cpu_s']:.1f} CPU s, ratio {r['cpu_s'] / old['cpu_s']:.2f}, "
                          f"{'same' if r['same_events_and_p99'] else 'DIFFERENT'} events and P99")
                lines.append(f"| {r['replicas']} | {r['requests']:,} | {r['wall_s']:.1f} | "
                             f"{r['cpu_s']:.1f} | {r['events']:,} | {r['requests_per_cpu_s']:,} | "
                             f"{r['cpu_us_per_event']:.1f} | {r['peak_rss_mb']} | "
                             f"{'-' if hit is None else f'{hit:.1%}'} | "
                             f"{r.get('step_timer_miss_cpu_s', '-')} | {paired} |")
    lines += ["", f"Request counts above {sim['max_requests']:,} were not run (`--max-requests`)."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for types, style in ((1, "-"), (4, "--")):
        for planner, marker in zip(PLANNERS, "os^"):
            rows = [r for r in report["planner"] if r["gpu_types"] == types and r["planner"] == planner]
            axes[0].plot([r["gpus"] for r in rows], [r["seconds"] for r in rows], style, marker=marker,
                         label=f"{planner}, {types} GPU type{'s' if types > 1 else ''}")
            base = [r for r in rows if r.get("baseline_seconds") is not None and planner == "oserve"]
            if base:
                axes[0].plot([r["gpus"] for r in base], [r["baseline_seconds"] for r in base], style,
                             marker="x", color="grey", label=f"oserve before, {types} type(s)")
    axes[0].set(xscale="log", yscale="log", xlabel="GPUs", ylabel="planner wall time (s)")
    sim = report["simulator"]
    done = [r for r in sim["by_requests"] if "wall_s" in r]
    axes[1].plot([r["requests"] for r in done], [r["requests_per_cpu_s"] for r in done], marker="o")
    axes[1].set(xscale="log", xlabel=f"requests ({SIM_GPUS} GPUs)", ylabel="simulated requests / CPU s")
    done = [r for r in sim["by_replicas"] if "wall_s" in r]
    axes[2].plot([r["replicas"] for r in done], [r["cpu_us_per_event"] for r in done], marker="o")
    axes[2].set(xscale="log", xlabel="replicas (constant load per replica)", ylabel="CPU us per event")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("oserve at scale (shared, loaded 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few small cases (minutes, not hours)")
    ap.add_argument("--max-requests", type=int, default=None,
                    help="largest simulated request count (default 10M, 10k with --quick)")
    ap.add_argument("--trace-rows", type=int, default=None, help="rows of the loading test (default 1M)")
    ap.add_argument("--requests-per-replica", type=int, default=REQUESTS_PER_REPLICA,
                    help="simulated requests per replica in the replica sweep (same duration at every size)")
    ap.add_argument("--sim-timeout-s", type=float, default=1800.0, help="stop one simulation after this")
    ap.add_argument("--baseline-src", default=None, help="source tree to time the same planner cases on")
    ap.add_argument("--baseline-timeout-s", type=float, default=300.0)
    ap.add_argument("--baseline-max-gpus", type=int, default=1024,
                    help="largest one-GPU-type case run on the baseline")
    ap.add_argument("--baseline-max-gpus-four", type=int, default=128,
                    help="largest four-GPU-type case run on the baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--name", default="scale_bench", help="file name stem of the results")
    ap.add_argument("--sections", default="planner,startup,trace,sim",
                    help="sections to run (the others are taken from --reuse)")
    ap.add_argument("--reuse", default=None, metavar="JSON", help="an earlier report to take the other "
                    "sections from (its command and load are kept in 'reused')")
    ap.add_argument("--sim-requests", default=None, help="request counts of the 256-GPU sweep (10000,30000)")
    ap.add_argument("--sim-replicas", default=None, help="replica counts of the replica sweep, e.g. 2,8,32")
    ap.add_argument("--baseline-max-requests", type=int, default=100_000,
                    help="largest simulation also run on the baseline")
    ap.add_argument("--sim-rows", nargs="*", default=[], metavar="JSON",
                    help="rows measured separately by --sim-case (one JSON object per file) to add")
    ap.add_argument("--sim-case", default=None, help=argparse.SUPPRESS)  # internal: one child run
    args = ap.parse_args(argv)
    if args.sim_case:
        print(json.dumps(_sim_case(json.loads(args.sim_case))))
        return 0
    sizes = dict(QUICK if args.quick else FULL)
    for key, flag in (("requests", args.sim_requests), ("replicas", args.sim_replicas)):
        if flag:
            sizes[key] = tuple(int(x) for x in flag.split(","))
    max_requests = args.max_requests or (10_000 if args.quick else 10_000_000)
    trace_rows = args.trace_rows or (50_000 if args.quick else 1_000_000)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_avg_before": os.getloadavg(), "git_revision": git_revision(),
              "command": " ".join(["python bench/scale_bench.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    sections = set(args.sections.split(","))
    earlier = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    if earlier:
        report["reused"] = {k: earlier[k] for k in ("utc", "command", "git_revision", "load_avg_before",
                                                     "load_avg_after")}
    baseline_max = {"one": args.baseline_max_gpus, "four": args.baseline_max_gpus_four}
    runners = {  # section name -> (report key, how to run it)
        "planner": ("planner", lambda: planner_section(sizes, args.baseline_src, args.baseline_timeout_s,
                                                       baseline_max)),
        "startup": ("startup", lambda: startup_section(args.baseline_src)),
        "trace": ("trace_loading", lambda: trace_section(trace_rows, min(trace_rows, 100_000),
                                                         args.baseline_src)),
        "sim": ("simulator", lambda: sim_section(
            sizes, max_requests, args.sim_timeout_s, args.requests_per_replica, args.baseline_src,
            args.baseline_max_requests,
            [json.loads(Path(f).read_text().strip().splitlines()[-1]) for f in args.sim_rows])),
    }
    for name, (key, run) in runners.items():
        report[key] = run() if name in sections or key not in earlier else earlier[key]
    report["load_avg_after"] = os.getloadavg()
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (out / f"{args.name}.md").write_text(markdown(report))
    plot(report, out / f"{args.name}.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
