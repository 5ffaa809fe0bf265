"""Why heterogeneous plans win or not: each configuration's capacity per GPU for each request type.

A heterogeneous deployment beats the best homogeneous one only when types rank configurations
differently (comparative advantage). This prints, for each model and trace of the spatial evaluation,
the cost model's requests/s per GPU of every feasible H100 configuration (up to 8 GPUs) for each type,
and marks each type's best configuration. Output: bench/results/spatial_capacity.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.sim.experiment import prepare_trace

MODELS = ("llama-2-70b", "opt-66b", "llama-30b", "opt-30b")
TRACES = ("azure-conv", "azure-code", "azure-mix")


def table(model: str, trace: str, window_s: float = 1200.0) -> list[str]:
    cost = CostModel(load_models().get(model))
    prepared = prepare_trace(trace, cost, window_s=(0.0, window_s))
    configs = [ReplicaConfig("H100-80GB", tp, pp) for tp in (1, 2, 4, 8) for pp in (1, 2, 4)
               if tp * pp <= 8 and cost.fits(ReplicaConfig("H100-80GB", tp, pp))]
    per_gpu = {c: [cost.type_capacity_rps(c, TypeLoad(s.mean_input_tokens, s.mean_output_tokens))
                   / c.num_gpus for s in prepared.stats] for c in configs}
    best = [max(configs, key=lambda c: per_gpu[c][t]) for t in range(len(prepared.stats))]
    share = [s.rate_rps / sum(x.rate_rps for x in prepared.stats) for s in prepared.stats]
    lines = [f"### {model}, {trace}", "",
             "| config | " + " | ".join(f"{s.name} ({share[t]:.0%} of requests)"
                                       for t, s in enumerate(prepared.stats)) + " |",
             "|---" * (len(prepared.stats) + 1) + "|"]
    for c in configs:
        cells = [f"**{v:.2f}**" if best[t] == c else f"{v:.2f}" for t, v in enumerate(per_gpu[c])]
        lines.append(f"| {c.label()} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--duration-s", type=float, default=1200.0, help="seconds of each trace to type")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    out = ["# Capacity per GPU (requests/s) of each configuration for each request type", "",
           "Cost model defaults (TPOT bound included). Bold: the type's best configuration.", ""]
    for model in args.models.split(","):
        for trace in args.traces.split(","):
            out += table(model, trace, args.duration_s)
    path = Path(args.out) / "spatial_capacity.md"
    path.write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
