"""A replica configuration: the unit the cost model prices and the planner chooses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class ReplicaConfig:
    """GPU type, tensor-parallel and pipeline-parallel degree and number formats of one replica.

    ``precision`` is the activation dtype the engine computes in (bf16, fp16, or fp32 on CPUs);
    ``weight_format`` and ``kv_cache_dtype`` are how weights and the KV cache are stored
    (``costmodel.precision`` prices them).
    """

    gpu_type: str
    tp: int = 1
    pp: int = 1
    precision: str = "bf16"
    weight_format: str = "bf16"
    kv_cache_dtype: str = "bf16"

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    def label(self) -> str:
        label = f"{self.gpu_type} TP{self.tp}" + (f" PP{self.pp}" if self.pp > 1 else "")
        if self.weight_format != "bf16":
            label += f" W:{self.weight_format}"
        if self.kv_cache_dtype != "bf16":
            label += f" KV:{self.kv_cache_dtype}"
        return label
