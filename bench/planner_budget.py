"""Planner time budget: the whole ``oserve plan --objective goodput --slo loose`` process per cluster size.

Runs the command as a fresh process (imports, trace loading, typing, the analytical shortlist and the
simulator's verification) and records its wall time and CPU time (user + system of the child: on a
shared machine the CPU time is what the budget means; the wall time is reported too). With
``--before-src DIR`` (a ``src`` directory of another revision) each size is also run on that code in the
same session, alternating, so that the ratio is paired. Budget (issue 10): <= 5 s at 16 GPUs, <= 60 s at
256. Writes bench/results/planner_budget.{json,md}.

    python bench/planner_budget.py [--sizes 16,64,256] [--model llama-2-70b] [--trace azure-mix]
        [--before-src /tmp/base/src] [--before-sizes 16] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = {16: 5.0, 256: 60.0}


def run_plan(src: str, gpus: int, model: str, trace: str) -> dict:
    """One ``oserve plan`` process on ``src``: its wall and CPU seconds and the plan it printed."""
    cmd = [sys.executable, "-m", "oserve.cli.main", "plan", "--cluster", f"{gpus // 8}x8xH100",
           "--model", model, "--trace", trace, "--objective", "goodput", "--slo", "loose", "--json"]
    # one BLAS thread: the planner's LPs are tiny, and idle-spinning BLAS threads only add CPU time
    env = dict(os.environ, PYTHONPATH=src, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"oserve plan failed on {src} at {gpus} GPUs:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"gpus": gpus, "wall_s": wall, "cpu_s": cpu, "planner_seconds": out.get("planner_seconds"),
            "deployment": out.get("deployment"),
            "predicted_goodput_scale": out.get("predicted_goodput_scale"),
            "simulated_goodput_scale": out.get("simulated_goodput_scale"),
            "verification_requests": out.get("verification_requests"),
            "confirmation": out.get("confirmation"),
            "shortlist": out.get("shortlist")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--model", default="llama-2-70b")
    ap.add_argument("--trace", default="azure-mix")
    ap.add_argument("--before-src", default=None, help="src directory of the revision to compare with")
    ap.add_argument("--before-sizes", default=None, help="sizes to run --before-src at (default: all)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    before_sizes = {int(s) for s in (args.before_sizes or args.sizes).split(",")}
    for gpus in (int(s) for s in args.sizes.split(",")):
        row = {"after": run_plan(here, gpus, args.model, args.trace)}
        if args.before_src and gpus in before_sizes:
            row["before"] = run_plan(args.before_src, gpus, args.model, args.trace)
        row["budget_s"] = BUDGET_S.get(gpus)
        rows.append(row)
        print(json.dumps({k: {m: v[m] for m in ("gpus", "wall_s", "cpu_s", "deployment")}
                          for k, v in row.items() if isinstance(v, dict)}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "model": args.model, "trace": args.trace, "before_src": args.before_src}
    (out / "planner_budget.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Planner time: `oserve plan --objective goodput --slo loose` ({args.model}, {args.trace})",
             "", f"{meta['date']}, {meta['cpus']} CPUs, 1-min load average {meta['load_avg_1m']:.1f} "
             "(shared machine: CPU time is the budget's measure, wall time depends on the load).", "",
             "| GPUs | budget | CPU s | wall s | deployment | predicted | simulated | confirmation |"
             + (" before: CPU s | before: deployment | before: simulated |" if args.before_src else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- |"
             + (" --- | --- | --- |" if args.before_src else "")]
    empty = " - | - | - |" if args.before_src else ""
    for row in rows:
        a = row["after"]
        line = (f"| {a['gpus']} | {row['budget_s'] or '-'} | {a['cpu_s']:.1f} | {a['wall_s']:.1f} | "
                f"{a['deployment']} | {a['predicted_goodput_scale']:.2f} | "
                f"{a['simulated_goodput_scale'] or 0:.2f} | {_confirmation(a.get('confirmation'))} |")
        if "before" in row:
            b = row["before"]
            line += f" {b['cpu_s']:.1f} | {b['deployment']} | {b['simulated_goodput_scale'] or 0:.2f} |"
        else:
            line += empty
        lines.append(line)
    (out / "planner_budget.md").write_text("\n".join(lines) + "\n")


def _confirmation(c: dict | None) -> str:
    """The verification's re-check of a winner other than the tuned fleet (``sim.verify.confirm``)."""
    if not c:
        return "-"
    return (f"{c['challenger']} {'confirmed' if c['confirmed'] else 'rejected'} "
            f"({c['probes']} probes of {c['requests']} requests)")


if __name__ == "__main__":
    main()
