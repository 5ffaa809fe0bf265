"""A replica configuration: the unit the cost model prices and the planner chooses.

A configuration is the hardware split (GPU type, TP, PP, precision, weight and KV formats) plus the two
engine settings that shape a replica's latency: the chunked-prefill token budget per step
(``max_num_batched_tokens``) and the most sequences running at once (``max_num_seqs``), both under vLLM's
names. ``0`` means "the engine's default" (resolved by the cost model); a sentinel integer rather than
``None`` keeps configurations totally ordered (``order=True``) and usable as dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from oserve.common.errors import ConfigError

ENGINE_DEFAULT = 0  # sentinel of the engine settings: the engine's own default


@dataclass(frozen=True, order=True)
class ReplicaConfig:
    """GPU type, tensor- and pipeline-parallel degree, number formats and engine settings of a replica.

    ``precision`` is the activation dtype the engine computes in (bf16, fp16, or fp32 on CPUs);
    ``weight_format`` and ``kv_cache_dtype`` are how weights and the KV cache are stored
    (``costmodel.precision`` prices them).
    """

    gpu_type: str
    tp: int = 1
    pp: int = 1
    precision: str = "bf16"
    max_num_batched_tokens: int = ENGINE_DEFAULT
    max_num_seqs: int = ENGINE_DEFAULT
    weight_format: str = "bf16"
    kv_cache_dtype: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"replica {name} must be a positive integer (or 0/null for the "
                                  f"engine default), got {value!r}")

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def hardware(self) -> ReplicaConfig:
        """The same split at the engine's default settings (what memory and step times depend on)."""
        if not (self.max_num_batched_tokens or self.max_num_seqs):
            return self
        return self.with_engine()

    @property
    def timing(self) -> ReplicaConfig:
        """What step times depend on: the hardware split, and with PP the chunk budget too (it caps each
        in-flight micro-batch, so it sets how a step's prompt tokens split across the pipeline)."""
        if self.pp == 1:
            return self.hardware
        return self.with_engine(self.max_num_batched_tokens)

    def with_engine(self, max_num_batched_tokens: int = ENGINE_DEFAULT,
                    max_num_seqs: int = ENGINE_DEFAULT) -> ReplicaConfig:
        return replace(self, max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs)

    def engine_label(self) -> str:
        """``"2048 tok, 128 seqs"`` for the settings that are set, ``""`` at the engine defaults."""
        parts = []
        if self.max_num_batched_tokens:
            parts.append(f"{self.max_num_batched_tokens} tok")
        if self.max_num_seqs:
            parts.append(f"{self.max_num_seqs} seqs")
        return ", ".join(parts)

    def label(self) -> str:
        engine = self.engine_label()
        label = f"{self.gpu_type} TP{self.tp}" + (f" PP{self.pp}" if self.pp > 1 else "")
        if self.weight_format != "bf16":
            label += f" W:{self.weight_format}"
        if self.kv_cache_dtype != "bf16":
            label += f" KV:{self.kv_cache_dtype}"
        return label + (f" ({engine})" if engine else "")


__all__ = ["ENGINE_DEFAULT", "ReplicaConfig"]
