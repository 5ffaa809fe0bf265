"""Arguments several subcommands share, and turning them into specs."""

from __future__ import annotations

import argparse

from oserve.common.errors import ConfigError
from oserve.costmodel.calibration import load_calibration
from oserve.costmodel.catalog import ClusterSpec, ModelSpec, load_gpus, load_models, parse_cluster
from oserve.costmodel.cost_model import DEFAULT_TPOT_SLO_S, CostModel


def add_cluster_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="2x8xH100",
                   help="NODESxGPUSxTYPE (e.g. 4x8xH100, 2x8xH100+1x8xA100-80GB) or a cluster YAML file")
    p.add_argument("--model", default="llama-2-70b", help="model name from the catalog")
    p.add_argument("--models", action="append", default=[], metavar="FILE",
                   help="extra model catalog YAML (repeatable)")
    p.add_argument("--gpus", action="append", default=[], metavar="FILE",
                   help="extra GPU catalog YAML (repeatable)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="cost-model calibration YAML (default: the shipped H100 fit)")
    p.add_argument("--plan-tpot", type=float, default=DEFAULT_TPOT_SLO_S, metavar="S",
                   help="time-per-output-token bound the planner's capacities respect "
                        f"(default {DEFAULT_TPOT_SLO_S}; 0 plans for raw throughput)")


def add_trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default="azure-conv",
                   help="trace file (Azure CSV, Mooncake JSONL, generic CSV) or azure-conv|azure-code|azure-mix")
    p.add_argument("--types", type=int, default=4, help="number of request types (k-means k)")
    p.add_argument("--seed", type=int, default=0)


def resolve(args) -> tuple[ClusterSpec, ModelSpec, CostModel]:
    if args.plan_tpot < 0:
        raise ConfigError(f"--plan-tpot must be >= 0 seconds (0 = no bound), got {args.plan_tpot}")
    gpus = load_gpus(args.gpus)
    cluster = parse_cluster(args.cluster, gpus)
    model = load_models(args.models).get(args.model)
    cost = CostModel(model, load_calibration(args.calibration),
                     gpus={g.name: g for g in (gpus.get(n) for n in gpus.names())},
                     tpot_slo_s=args.plan_tpot if args.plan_tpot > 0 else None)
    return cluster, model, cost
