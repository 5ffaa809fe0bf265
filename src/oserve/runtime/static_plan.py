"""Plans the runtime builds itself, without the planner: for a CPU box or a fixed fleet."""

from __future__ import annotations

from collections.abc import Sequence

from oserve.common.errors import ConfigError
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Plan, Replica


def static_plan(model: str, configs: Sequence[ReplicaConfig], type_names: Sequence[str],
                dispatch: Sequence[Sequence[float]] | None = None,
                type_rates_rps: Sequence[float] | None = None) -> Plan:
    """A plan over the given replicas; without ``dispatch`` every type is spread evenly over them."""
    if not configs:
        raise ConfigError("a plan needs at least one replica")
    num_replicas, num_types = len(configs), len(type_names)
    if dispatch is None:
        dispatch = [[1.0 / num_replicas] * num_replicas for _ in range(num_types)]
    if len(dispatch) != num_types or any(len(row) != num_replicas for row in dispatch):
        raise ConfigError(f"dispatch must be {num_types} rows of {num_replicas} fractions")
    replicas, next_gpu = [], 0
    for i, config in enumerate(configs):
        replicas.append(Replica(i, tuple(range(next_gpu, next_gpu + config.num_gpus)), config))
        next_gpu += config.num_gpus
    rates = tuple(type_rates_rps) if type_rates_rps is not None else (0.0,) * num_types
    return Plan(model=model, replicas=tuple(replicas), type_names=tuple(type_names),
                type_rates_rps=rates, capacity_rps=tuple((0.0,) * num_types for _ in configs),
                dispatch=tuple(tuple(float(x) for x in row) for row in dispatch), demand_scale=0.0,
                utilisation=(0.0,) * num_replicas, bottlenecks=(), planner="static")


__all__ = ["static_plan"]
