"""The result of planning: a deployment (replicas on GPUs) and the dispatch of request types to it."""

from __future__ import annotations

from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.costmodel.replica_config import ENGINE_DEFAULT, ReplicaConfig


@dataclass(frozen=True)
class Replica:
    """One model replica: the GPUs it runs on (global ids) and its configuration."""

    replica_id: int
    gpus: tuple[int, ...]
    config: ReplicaConfig

    def to_dict(self) -> dict:
        """JSON form; the engine settings under vLLM's names, ``null`` for the engine's default."""
        return {"replica_id": self.replica_id, "gpus": list(self.gpus), "tp": self.config.tp,
                "pp": self.config.pp, "gpu_type": self.config.gpu_type,
                "precision": self.config.precision,
                "max_num_batched_tokens": self.config.max_num_batched_tokens or None,
                "max_num_seqs": self.config.max_num_seqs or None}

    @staticmethod
    def from_dict(d: dict) -> Replica:
        engine = {}
        for key in ("max_num_batched_tokens", "max_num_seqs"):
            value = d.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ConfigError(f"plan replica {d.get('replica_id')}: '{key}' must be a positive "
                                  f"integer or null, got {value!r}")
            engine[key] = value or ENGINE_DEFAULT
        cfg = ReplicaConfig(d["gpu_type"], d["tp"], d["pp"], d.get("precision", "bf16"), **engine)
        return Replica(d["replica_id"], tuple(d["gpus"]), cfg)


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
    # SLO planning (None for the throughput objective): the objective, the goodput scale the latency
    # model predicts and, once the simulator verified the plan, the one it measured
    objective: str = "throughput"
    predicted_goodput_scale: float | None = None
    simulated_goodput_scale: float | None = None

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
            "objective": self.objective,
            "predicted_goodput_scale": self.predicted_goodput_scale,
            "simulated_goodput_scale": self.simulated_goodput_scale,
        }

    @staticmethod
    def from_dict(d: dict) -> Plan:
        replicas = tuple(Replica.from_dict(r) for r in d["replicas"])
        return Plan(d["model"], replicas, tuple(d["types"]), tuple(d["type_rates_rps"]),
                    tuple(tuple(c) for c in d["capacity_rps"]), tuple(tuple(x) for x in d["dispatch"]),
                    d["demand_scale"], tuple(d["utilisation"]), tuple(d["bottlenecks"]), d["planner"],
                    d.get("planner_seconds", 0.0), d.get("objective", "throughput"),
                    d.get("predicted_goodput_scale"), d.get("simulated_goodput_scale"))


__all__ = ["Plan", "Replica"]
