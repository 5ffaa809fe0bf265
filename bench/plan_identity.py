"""Do two source trees choose the same plans? Every planner on the planner benchmark's cases (3 traces x
2 models x 8-256 H100s) and on small mixed-GPU and odd-node-size clusters, run in each tree.

    python bench/plan_identity.py --baseline-src /path/to/old/src [--out bench/results]

Runs the cases once per tree (one subprocess each, its own PYTHONPATH) and writes
bench/results/plan_identity.{json,md}: per case both plans (without planner_seconds), both times, and
whether the plans are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [(t, m, f"{n // 8}x8xH100") for t in ("azure-conv", "azure-code", "azure-mix")
         for m in ("llama-2-70b", "opt-66b") for n in (8, 16, 32, 64, 128, 256)]
CASES += [("azure-mix", m, c) for m in ("llama-2-70b", "llama-2-13b", "opt-30b")
          for c in ("1x8xH100+1x8xA100-80GB", "3x8xH100+2x8xL40S+1x4xA100-80GB", "2x8xH100+2x8xH200",
                    "1x8xH100+1x8xA100-80GB+1x8xH200+1x8xL40S", "3x6xH100", "2x12xA100-80GB")]
PLANNERS = ("oserve", "oserve-raw", "milp", "homogeneous", "default")


def run_cases(out_path: str) -> None:
    """In the current interpreter's tree: every case, every planner, to a JSON file."""
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.planner.api import make_plan
    from oserve.planner.search import SearchParams
    from oserve.workload import fit_request_types, load_trace

    out, stats_of = {}, {}
    for trace_name, model_name, spec in CASES:
        if trace_name not in stats_of:
            trace = load_trace(trace_name)
            stats_of[trace_name] = fit_request_types(trace, 4, 0).stats(trace)
        extra = ("exhaustive",) if spec in ("1x8xH100", "2x8xH100") else ()
        for planner in PLANNERS + extra:
            t0 = time.perf_counter()
            try:
                raw = planner == "oserve-raw"
                search = SearchParams(min_gain_over_homogeneous=0.0) if raw else SearchParams()
                plan = make_plan(parse_cluster(spec), load_models().get(model_name), stats_of[trace_name],
                                 "oserve" if raw else planner, search=search)
                d = plan.to_dict()
                d.pop("planner_seconds")
            except Exception as exc:  # an error is a result to compare too
                d = {"error": repr(exc)}
            out[f"{trace_name}|{model_name}|{spec}|{planner}"] = {"plan": d, "s": time.perf_counter() - t0}
            print(trace_name, model_name, spec, planner, round(time.perf_counter() - t0, 2),
                  d.get("deployment", d.get("error")), file=sys.stderr, flush=True)
    Path(out_path).write_text(json.dumps(out))


def compare(old: dict, new: dict, label: str) -> tuple[list[dict], str]:
    rows = [{"case": k, "same_plan": old[k]["plan"] == new[k]["plan"], "baseline_s": round(old[k]["s"], 3),
             "s": round(new[k]["s"], 3),
             "deployment": new[k]["plan"].get("deployment", new[k]["plan"].get("error"))}
            for k in old if k in new]
    same = sum(r["same_plan"] for r in rows)
    lines = [f"Baseline: {label}. {same} of {len(rows)} plans identical (plan dicts without "
             "planner_seconds). Times are wall seconds of the two runs, one after the other on a shared, "
             "loaded 2-core machine: indicative only.", "",
             "| case (trace, model, cluster, planner) | same | baseline s | s | deployment |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['case'].replace('|', ', ')} | {'yes' if r['same_plan'] else 'NO'} | "
              f"{r['baseline_s']:.2f} | {r['s']:.2f} | {r['deployment']} |" for r in rows]
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-src", help="the other tree's src/ folder")
    ap.add_argument("--baseline-label", default="the tree given by --baseline-src")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--run-cases", help=argparse.SUPPRESS)  # internal: run in this tree, write JSON here
    ap.add_argument("--from-json", nargs=2, metavar=("BASELINE", "NEW"), help="compare two saved runs")
    args = ap.parse_args(argv)
    if args.run_cases:
        run_cases(args.run_cases)
        return 0
    if args.from_json:
        old, new = (json.loads(Path(p).read_text()) for p in args.from_json)
    else:
        if not args.baseline_src:
            ap.error("--baseline-src is required")
        here = str(Path(__file__).resolve().parents[1] / "src")
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, src in (("baseline", args.baseline_src), ("new", here)):
                path = Path(tmp) / f"{label}.json"
                env = {**os.environ, "PYTHONPATH": src, "OSERVE_CACHE_DIR": "off"}
                subprocess.run([sys.executable, __file__, "--run-cases", str(path)], env=env, check=True)
                results.append(json.loads(path.read_text()))
        old, new = results
    rows, text = compare(old, new, args.baseline_label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan_identity.json").write_text(json.dumps(rows, indent=1))
    (out / "plan_identity.md").write_text(text)
    print(text.splitlines()[0])
    return 0 if all(r["same_plan"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
