"""Planner time budget: the whole ``oserve plan --objective goodput --slo ...`` process per cluster size.

Runs the command as a fresh process (imports, trace loading, typing, the analytical shortlist and the
simulator's verification) and records its wall time and CPU time (user + system of the child: on a
shared machine the CPU time is what the budget means; the wall time is reported too). Cases are every
(model, trace, SLO preset, size) of ``--models``, ``--traces``, ``--slos`` and ``--sizes``, each run
``--repeat`` times. With ``--before-src DIR`` (a ``src`` directory of another revision) each run is
paired with one on that code, the two in alternating order, so that the ratio is paired; the row then
says whether both printed the same plan (the whole JSON but ``planner_seconds``: deployment, dispatch,
predicted and simulated goodput, shortlist, confirmation). Budget (issue 10): <= 5 s at 16 GPUs, <= 60 s
at 256. Writes ``<out>/<name>.{json,md}``.

Python's compiled-module cache: by default each tree's modules are compiled once into a temporary
``PYTHONPYCACHEPREFIX`` by an untimed warm-up run, as an installed package has them (this machine sets
``PYTHONDONTWRITEBYTECODE=1``, under which every run recompiles the ~70 oserve modules it imports: about
0.15 CPU s); ``--no-bytecode-cache`` measures with whatever the environment says.

    python bench/planner_budget.py [--sizes 16,64,256] [--models llama-2-70b] [--traces azure-mix]
        [--slos loose] [--repeat 1] [--before-src /tmp/base/src] [--before-sizes 16]
        [--out bench/results] [--name planner_budget]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = {16: 5.0, 256: 60.0}


def plan_env(src: str, pycache: str | None) -> dict[str, str]:
    # one BLAS thread: the planner's LPs are tiny, and idle-spinning BLAS threads only add CPU time
    env = dict(os.environ, PYTHONPATH=src, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def run_plan(src: str, gpus: int, model: str, trace: str, slo: str, pycache: str | None) -> dict:
    """One ``oserve plan`` process on ``src``: its wall and CPU seconds and the plan it printed."""
    cmd = [sys.executable, "-m", "oserve.cli.main", "plan", "--cluster", f"{gpus // 8}x8xH100",
           "--model", model, "--trace", trace, "--objective", "goodput", "--slo", slo, "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=plan_env(src, pycache), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"oserve plan failed on {src} at {gpus} GPUs ({model}, {trace}, {slo}):\n"
                         f"{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"gpus": gpus, "wall_s": wall, "cpu_s": cpu, "planner_seconds": out.get("planner_seconds"),
            "deployment": out.get("deployment"),
            "predicted_goodput_scale": out.get("predicted_goodput_scale"),
            "simulated_goodput_scale": out.get("simulated_goodput_scale"),
            "verification_requests": out.get("verification_requests"),
            "confirmation": out.get("confirmation"),
            "shortlist": out.get("shortlist"),
            "plan": {k: v for k, v in out.items() if k != "planner_seconds"}}


def run_case(case: tuple[str, str, str, int], repeat: int, here: str, before_src: str | None,
             pycache: dict[str, str | None]) -> dict:
    """``repeat`` runs of one case (paired with ``before_src`` when given, alternating which goes first)."""
    model, trace, slo, gpus = case
    runs: dict[str, list[dict]] = {"after": [], "before": []}
    for i in range(repeat):
        order = [("after", here), ("before", before_src)] if before_src else [("after", here)]
        for label, src in (order if i % 2 == 0 else order[::-1]):
            runs[label].append(run_plan(str(src), gpus, model, trace, slo, pycache[label]))
    row: dict = {"model": model, "trace": trace, "slo": slo, "gpus": gpus, "budget_s": BUDGET_S.get(gpus),
                 "after": runs["after"][0], "after_cpu_s": [r["cpu_s"] for r in runs["after"]],
                 "after_wall_s": [r["wall_s"] for r in runs["after"]],
                 # the same inputs give the same plan every time (the planner is deterministic)
                 "after_deterministic": all(r["plan"] == runs["after"][0]["plan"] for r in runs["after"])}
    if runs["before"]:
        row.update(before=runs["before"][0], before_cpu_s=[r["cpu_s"] for r in runs["before"]],
                   same_plan=all(a["plan"] == b["plan"] for a, b in zip(runs["after"], runs["before"])),
                   paired_cpu_ratio=statistics.median(a["cpu_s"] / b["cpu_s"]
                                                      for a, b in zip(runs["after"], runs["before"])))
    for r in (row["after"], row.get("before")):
        if r is not None:
            r.pop("plan")  # compared above; the JSON keeps the summary fields
    return row


def warm_up(src: str, pycache: str | None) -> None:
    """Compile ``src``'s modules into ``pycache`` (an untimed plan at 8 GPUs imports what a plan does)."""
    if pycache is not None:
        run_plan(src, 8, "llama-2-70b", "azure-conv", "loose", pycache)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--models", "--model", default="llama-2-70b")
    ap.add_argument("--traces", "--trace", default="azure-mix")
    ap.add_argument("--slos", default="loose")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (paired: each with a before run)")
    ap.add_argument("--before-src", default=None, help="src directory of the revision to compare with")
    ap.add_argument("--before-sizes", default=None, help="sizes to run --before-src at (default: all)")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="do not give each tree a compiled-module cache (see the module docstring)")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--name", default="planner_budget", help="output file stem")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    before_sizes = {int(s) for s in (args.before_sizes or args.sizes).split(",")}
    cases = [(m, t, s, int(g)) for g in args.sizes.split(",") for m in args.models.split(",")
             for t in args.traces.split(",") for s in args.slos.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pycache = {"after": None if args.no_bytecode_cache else f"{tmp}/after",
                   "before": None if args.no_bytecode_cache else f"{tmp}/before"}
        warm_up(here, pycache["after"])
        if args.before_src:
            warm_up(args.before_src, pycache["before"])
        for case in cases:
            before = args.before_src if case[3] in before_sizes else None
            row = run_case(case, args.repeat, here, before, pycache)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("model", "trace", "slo", "gpus", "after_cpu_s")}
                             | {k: row[k] for k in ("before_cpu_s", "same_plan") if k in row}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "models": args.models, "traces": args.traces, "slos": args.slos, "repeat": args.repeat,
            "before_src": args.before_src, "bytecode_cache": not args.no_bytecode_cache}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{args.name}.md").write_text(render(meta, rows, bool(args.before_src)))


def render(meta: dict, rows: list[dict], paired: bool) -> str:
    lines = [f"# Planner time: `oserve plan --objective goodput` ({meta['models']}; {meta['traces']}; "
             f"SLO {meta['slos']})", "",
             f"{meta['date']}, {meta['cpus']} CPUs, 1-min load average {meta['load_avg_1m']:.1f} at the end "
             "(shared machine: CPU time is the budget's measure, wall time depends on the load); "
             f"{meta['repeat']} run(s) per case"
             + (", each paired with one on the before tree (alternating which runs first)" if paired else "")
             + "; compiled modules "
             + ("cached per tree" if meta["bytecode_cache"] else "as the environment says")
             + ". CPU s: median (min-max).", ""]
    head = ("| model | trace | SLO | GPUs | budget | CPU s | wall s | deployment | predicted | simulated | "
            "confirmation |")
    if paired:
        head += " before: CPU s | after/before (paired median) | same plan |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for row in rows:
        a = row["after"]
        line = (f"| {row['model']} | {row['trace']} | {row['slo']} | {row['gpus']} | "
                f"{row['budget_s'] or '-'} | "
                f"{_spread(row['after_cpu_s'])} | {statistics.median(row['after_wall_s']):.1f} | "
                f"{a['deployment']} | {a['predicted_goodput_scale']:.2f} | "
                f"{a['simulated_goodput_scale'] or 0:.2f} | {_confirmation(a.get('confirmation'))} |")
        if paired:
            if "before" in row:
                line += (f" {_spread(row['before_cpu_s'])} | {row['paired_cpu_ratio']:.2f} | "
                         f"{'yes' if row['same_plan'] else 'NO'} |")
            else:
                line += " - | - | - |"
        lines.append(line)
    if paired:
        both = [r for r in rows if "before" in r]
        same = sum(r["same_plan"] for r in both)
        lines += ["", f"Same plan in {same} of {len(both)} paired cases."]
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def _confirmation(c: dict | None) -> str:
    """The verification's re-check of a winner other than the tuned fleet (``sim.verify.confirm``)."""
    if not c:
        return "-"
    return (f"{c['challenger']} {'confirmed' if c['confirmed'] else 'rejected'} "
            f"({c['probes']} probes of {c['requests']} requests)")


if __name__ == "__main__":
    main()
