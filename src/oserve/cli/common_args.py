"""Arguments several subcommands share, argument types with clear errors, and turning flags into the
typed configs of the layers below (whose fields hold the defaults: the flags only read them)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from oserve.common.validation import build
from oserve.costmodel.catalog import ClusterSpec, ModelSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.setup import CostModelConfig

M = TypeVar("M", bound=BaseModel)


def default(config_type: type, field: str) -> Any:
    """The default of a config field (pydantic model or dataclass), so a flag's default is written once,
    on the config type."""
    if isinstance(config_type, type) and issubclass(config_type, BaseModel):
        return config_type.model_fields[field].get_default(call_default_factory=True)
    spec = {f.name: f for f in dataclasses.fields(config_type)}[field]  # type: ignore[arg-type]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def number(kind: type = float, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number in [low, high] (or (low, high] with ``low_open``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got '{text}'") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = number(float, 0.0, low_open=True)
NON_NEGATIVE = number(float, 0.0)
POSITIVE_INT = number(int, 1)


def add_cost_model_args(p: argparse.ArgumentParser) -> None:
    """Catalogs, calibration and the TPOT bound: how a cluster and model become a cost model."""
    p.add_argument("--models", action="append", default=[], metavar="FILE",
                   help="extra model catalog YAML (repeatable)")
    p.add_argument("--gpus", action="append", default=[], metavar="FILE",
                   help="extra GPU catalog YAML (repeatable)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="cost-model calibration YAML (default: the shipped H100 fit)")
    tpot = default(CostModelConfig, "plan_tpot_s")
    p.add_argument("--plan-tpot", type=NON_NEGATIVE, default=tpot, metavar="S",
                   help=f"time-per-output-token bound the planner's capacities respect (default {tpot}; "
                        "0 plans for raw throughput)")


def add_cluster_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=default(CostModelConfig, "cluster"),
                   help="NODESxGPUSxTYPE (e.g. 4x8xH100, 2x8xH100+1x8xA100-80GB) or a cluster YAML file")
    p.add_argument("--model", default=default(CostModelConfig, "model"), help="model name from the catalog")
    add_cost_model_args(p)


def add_trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default="azure-conv",
                   help="trace file (Azure CSV, Mooncake JSONL, generic CSV) or "
                        "azure-conv|azure-code|azure-mix")
    p.add_argument("--types", type=POSITIVE_INT, default=4, help="number of request types (k-means k)")
    p.add_argument("--seed", type=int, default=0)


def add_slo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo-ttft-s", "--slo-ttft", dest="slo_ttft_s", type=POSITIVE, default=None,
                   metavar="S", help="TTFT bound for SLO attainment")
    p.add_argument("--slo-tpot-s", "--slo-tpot", dest="slo_tpot_s", type=POSITIVE, default=None,
                   metavar="S", help="TPOT bound for SLO attainment")


def cost_model_config(args: argparse.Namespace) -> CostModelConfig:
    return build(CostModelConfig, {"cluster": args.cluster, "model": args.model,
                                   "model_catalogs": tuple(args.models), "gpu_catalogs": tuple(args.gpus),
                                   "calibration": args.calibration, "plan_tpot_s": args.plan_tpot},
                 names={"plan_tpot_s": "--plan-tpot", "cluster": "--cluster", "model": "--model"})


def resolve(args: argparse.Namespace) -> tuple[ClusterSpec, ModelSpec, CostModel]:
    return cost_model_config(args).resolve()


def config_from_flags(model: type[M], values: Mapping[str, Any], flags: Mapping[str, str]) -> M:
    """Build a config from flag values; a value the config refuses is reported under its flag."""
    return build(model, values, names=flags)


def parse_time_range(text: str | None) -> tuple[float, float] | None:
    """``--time-range START:END`` in seconds of the trace."""
    from oserve.common.errors import ConfigError

    if text is None:
        return None
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--time-range: expected START:END in seconds, got '{text}'") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise ConfigError(f"--time-range: need 0 <= START < END (finite seconds), got '{text}'")
    return start, end
