"""The result of planning: a deployment (replicas on GPUs) and the dispatch of request types to it."""

from __future__ import annotations

from dataclasses import dataclass

from oserve.costmodel.replica_config import ReplicaConfig


@dataclass(frozen=True)
class Replica:
    """One model replica: the GPUs it runs on (global ids) and its configuration."""

    replica_id: int
    gpus: tuple[int, ...]
    config: ReplicaConfig

    def to_dict(self) -> dict:
        return {"replica_id": self.replica_id, "gpus": list(self.gpus), "tp": self.config.tp,
                "pp": self.config.pp, "gpu_type": self.config.gpu_type,
                "precision": self.config.precision, "weight_format": self.config.weight_format,
                "kv_cache_dtype": self.config.kv_cache_dtype}


@dataclass(frozen=True)
class Plan:
    """A deployment plus how each request type's rate is split over its replicas.

    ``dispatch[t][r]`` is the fraction of type t's requests sent to replica r (each row sums to 1 for a
    type with traffic). ``capacity_rps[r][t]`` is what replica r could serve of type t alone.
    ``demand_scale`` is the largest factor by which the planned per-type rates can be multiplied and
    still be carried (max concurrent flow); ``utilisation[r]`` is replica r's load at the planned rates.
    """

    model: str
    replicas: tuple[Replica, ...]
    type_names: tuple[str, ...]
    type_rates_rps: tuple[float, ...]
    capacity_rps: tuple[tuple[float, ...], ...]
    dispatch: tuple[tuple[float, ...], ...]
    demand_scale: float
    utilisation: tuple[float, ...]
    bottlenecks: tuple[int, ...]
    planner: str
    planner_seconds: float = 0.0

    @property
    def num_gpus(self) -> int:
        return sum(r.config.num_gpus for r in self.replicas)

    def configs(self) -> list[ReplicaConfig]:
        return [r.config for r in self.replicas]

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for r in self.replicas:
            counts[r.config.label()] = counts.get(r.config.label(), 0) + 1
        return " + ".join(f"{n}x[{label}]" for label, n in sorted(counts.items()))

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "planner": self.planner,
            "planner_seconds": self.planner_seconds,
            "deployment": self.describe(),
            "replicas": [r.to_dict() for r in self.replicas],
            "types": list(self.type_names),
            "type_rates_rps": list(self.type_rates_rps),
            "capacity_rps": [list(c) for c in self.capacity_rps],
            "dispatch": [list(d) for d in self.dispatch],
            "demand_scale": self.demand_scale,
            "utilisation": list(self.utilisation),
            "bottlenecks": list(self.bottlenecks),
        }

    @staticmethod
    def from_dict(d: dict) -> Plan:
        replicas = tuple(Replica(r["replica_id"], tuple(r["gpus"]), _replica_config(r)) for r in d["replicas"])
        return Plan(d["model"], replicas, tuple(d["types"]), tuple(d["type_rates_rps"]),
                    tuple(tuple(c) for c in d["capacity_rps"]), tuple(tuple(x) for x in d["dispatch"]),
                    d["demand_scale"], tuple(d["utilisation"]), tuple(d["bottlenecks"]), d["planner"],
                    d.get("planner_seconds", 0.0))


def _replica_config(r: dict) -> ReplicaConfig:
    precision = r.get("precision", "bf16")
    weight_format = r.get("weight_format", "bf16")
    if precision == "fp8":  # plans written before weight_format existed said fp8 weights this way
        precision, weight_format = "bf16", "fp8"
    return ReplicaConfig(r["gpu_type"], r["tp"], r["pp"], precision, weight_format,
                         r.get("kv_cache_dtype", "bf16"))


__all__ = ["Plan", "Replica"]
