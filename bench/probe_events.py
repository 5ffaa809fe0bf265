"""Simulated events of one ``oserve plan --objective goodput --slo loose`` process, per model at 16 GPUs.

A load-independent companion to ``bench/planner_budget.py``: the simulator's work (events of every
simulation the planner ran, how many simulations, how many stopped early by ``sim.early_stop``) and the
chosen plan, for this revision's ``src`` and, with ``--before-src DIR``, another revision's, each in a
fresh process. Writes bench/results/probe_events.{json,md}.

    python bench/probe_events.py [--models llama-30b,llama-2-70b] [--gpus 16] [--before-src /tmp/base/src]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import subprocess
import sys
from pathlib import Path


def child(model: str, gpus: int) -> None:
    """Run the planner in this process, counting what every simulation did; print one JSON line."""
    from oserve.cli.main import main
    from oserve.sim import simulator

    runs: list[tuple[int, bool]] = []
    run = simulator.Simulation.run

    def counted(self, *args, **kwargs):
        res = run(self, *args, **kwargs)
        runs.append((res.num_events, "stopped_early_s" in res.meta))
        return res

    simulator.Simulation.run = counted  # type: ignore[method-assign]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["plan", "--cluster", f"{gpus // 8}x8xH100", "--model", model, "--trace", "azure-mix",
              "--objective", "goodput", "--slo", "loose", "--json"])
    plan = json.loads(out.getvalue())
    print(json.dumps({"events": sum(e for e, _ in runs), "simulations": len(runs),
                      "stopped": sum(s for _, s in runs), "deployment": plan.get("deployment"),
                      "simulated_goodput_scale": plan.get("simulated_goodput_scale"),
                      "confirmation": plan.get("confirmation")}))


def measure(src: str, model: str, gpus: int) -> dict:
    env = dict(os.environ, PYTHONPATH=src, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", model, "--gpus", str(gpus)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"planning {model} on {src} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-30b,llama-2-70b")
    ap.add_argument("--gpus", type=int, default=16)
    ap.add_argument("--before-src", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.gpus)
        return
    here = str(Path(__file__).resolve().parents[1] / "src")
    rows = []
    for model in args.models.split(","):
        row = {"model": model, "gpus": args.gpus, "after": measure(here, model, args.gpus)}
        if args.before_src:
            row["before"] = measure(args.before_src, model, args.gpus)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "before_src": args.before_src}
    (out / "probe_events.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Simulated events of `oserve plan --objective goodput --slo loose` (azure-mix)", "",
             f"{meta['date']}; before: {args.before_src or '-'}", "",
             "| model | GPUs | events | simulations (stopped early) | deployment | simulated scale |"
             " before: events | before: simulations | after / before events | same plan |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a, b = r["after"], r.get("before")
        line = (f"| {r['model']} | {r['gpus']} | {a['events']} | {a['simulations']} ({a['stopped']}) | "
                f"{a['deployment']} | {a['simulated_goodput_scale']} |")
        if b:
            same = all(a[k] == b[k] for k in ("deployment", "simulated_goodput_scale", "confirmation"))
            line += (f" {b['events']} | {b['simulations']} | {a['events'] / b['events']:.2f} | "
                     f"{'yes' if same else 'NO'} |")
        else:
            line += " - | - | - | - |"
        lines.append(line)
    (out / "probe_events.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
