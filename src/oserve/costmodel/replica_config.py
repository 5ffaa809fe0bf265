"""A replica configuration: the unit the cost model prices and the planner chooses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ReplicaConfig:
    """GPU type, tensor-parallel and pipeline-parallel degree, weight precision of one replica."""

    gpu_type: str
    tp: int = 1
    pp: int = 1
    precision: str = "bf16"

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    def label(self) -> str:
        return f"{self.gpu_type} TP{self.tp}" + (f" PP{self.pp}" if self.pp > 1 else "")
