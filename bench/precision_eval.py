"""SLO goodput with number formats allowed: bf16 only against fp8 KV, and fp8 weights plus fp8 KV.

For each (model, cluster size, trace) scenario, the goodput planner (`oserve` as `oserve plan` runs it:
latency-model shortlist, verified by the simulator on the trace's busiest requests) plans three times
over the same trace window: with bf16 only (today's
default), with an fp8 KV cache allowed, and with fp8 weights and fp8 KV allowed. Each plan's SLO goodput
scale (highest rate scale with >= 90% of every type within the SLO) is then found in the simulator
(bisection to 3%, `oserve.sim.goodput`), side by side in one run. Both the planner's prediction and the
simulation use the cost model's fp8 factors, which are **modelled** (datasheet peak, bf16 kernel
efficiency) until a GPU profile calibrates them (docs/precision.md): these ratios say what the model
predicts, not what an H100 measured.

    python bench/precision_eval.py --quick      # 2 scenarios (~minutes on 2 cores)
    python bench/precision_eval.py              # the scenario grid; writes bench/results/precision_eval.*
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.verify import plan_with_slo
from oserve.workload.slo import slo_from_flags

VARIANTS = {"bf16": (("bf16",), ("bf16",)),
            "kv-fp8": (("bf16",), ("bf16", "fp8")),
            "w-fp8+kv-fp8": (("bf16", "fp8"), ("bf16", "fp8"))}
SCENARIOS = [("llama-2-70b", 8, "azure-code"), ("llama-2-70b", 8, "azure-conv"),
             ("llama-2-70b", 16, "azure-mix"), ("llama-3.1-70b", 8, "azure-code"),
             ("opt-66b", 16, "azure-conv"), ("llama-30b", 8, "azure-mix")]
QUICK = [("llama-2-70b", 8, "azure-code"), ("llama-30b", 8, "azure-conv")]


def run_scenario(model: str, num_gpus: int, trace: str, slo_name: str, window_s: float,
                 config: SimConfig) -> dict:
    t0 = time.perf_counter()
    cost = CostModel(load_models().get(model))
    cluster = parse_cluster(f"{num_gpus // 8}x8xH100-80GB")
    prepared = prepare_trace(trace, cost, 4, config.seed, (0.0, window_s))
    slo = slo_from_flags(slo_name, None, None, None)
    out: dict = {"model": model, "num_gpus": num_gpus, "trace": trace, "slo": slo.describe(),
                 "window_s": window_s, "requests": len(prepared.trace), "variants": {}}
    for name, (weights, kv) in VARIANTS.items():
        plan, _ = plan_with_slo(cluster, cost, prepared, "oserve", slo, "goodput", config,
                                weight_formats=weights, kv_formats=kv)
        res = plan_goodput(plan, prepared, cost, config, slo,
                           start_scale=max(plan.predicted_goodput_scale or 1.0, 1e-3))
        dropped = int((~res.best.completed).sum()) if res.best is not None else None
        out["variants"][name] = {"deployment": plan.describe(),
                                 "predicted_goodput_scale": plan.predicted_goodput_scale,
                                 "simulated_goodput_scale": res.scale, "dropped": dropped,
                                 "planner_seconds": plan.planner_seconds}
    base = out["variants"]["bf16"]
    for v in out["variants"].values():
        for key in ("predicted_goodput_scale", "simulated_goodput_scale"):
            b = base[key]
            v[key.replace("_goodput_scale", "_ratio_vs_bf16")] = (v[key] / b) if b else None
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def render(results: list[dict]) -> str:
    lines = ["# SLO goodput with fp8 allowed (modelled: fp8 factors uncalibrated)", "",
             "Goodput scale = highest rate scale with >= 90% of every type within the SLO; simulated on the "
             "trace window, ratios against bf16 only in the same run.", "",
             "| model | GPUs | trace | bf16 plan | simulated bf16 | kv-fp8 (x bf16) | w-fp8+kv-fp8 (x bf16) |"
             " w-fp8+kv-fp8 plan |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        v = r["variants"]

        def ratio(name: str, v: dict = v) -> str:
            x = v[name]["simulated_ratio_vs_bf16"]
            return "-" if x is None else f"{x:.2f}x"
        lines.append(f"| {r['model']} | {r['num_gpus']} | {r['trace']} | {v['bf16']['deployment']} | "
                     f"{v['bf16']['simulated_goodput_scale']:.2f} | {ratio('kv-fp8')} | "
                     f"{ratio('w-fp8+kv-fp8')} | {v['w-fp8+kv-fp8']['deployment']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two scenarios")
    ap.add_argument("--slo", default="loose", choices=("loose", "tight"))
    ap.add_argument("--window-s", type=float, default=600.0, help="trace window simulated")
    ap.add_argument("--out", default="bench/results/precision_eval")
    args = ap.parse_args(argv)
    config = SimConfig(seed=0)
    results = []
    for model, gpus, trace in QUICK if args.quick else SCENARIOS:
        r = run_scenario(model, gpus, trace, args.slo, args.window_s, config)
        print(f"{model} {gpus} GPUs {trace}: " + ", ".join(
            f"{k} {v['simulated_goodput_scale']:.2f}" for k, v in r["variants"].items()), flush=True)
        results.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"git_revision": git_revision(), "slo": args.slo, "window_s": args.window_s, "results": results}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
