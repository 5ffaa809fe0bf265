"""Weight layout: which pieces of the model each GPU of a replica holds.

The model is cut into chunks: each of the ``num_layers`` decoder layers and the two vocabulary matrices
(embedding with the first pipeline stage, LM head with the last) is split into ``slices`` equal slices
along the tensor-parallel dimension, ``slices`` being a multiple of every TP degree involved. A GPU of
tensor rank j of a TP-t replica holds slices [j*slices/t, (j+1)*slices/t) of its stage's layers, so a
shard of one TP degree can be assembled from shards of another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import ModelSpec
from oserve.planner.plan import Replica

Chunk = tuple[int, int]  # (layer index: 0 embedding, 1..L decoder layers, L+1 LM head; slice)


@dataclass(frozen=True)
class WeightLayout:
    model: ModelSpec
    slices: int

    def __post_init__(self) -> None:
        if self.slices < 1:
            raise ConfigError("a weight layout needs at least one slice per layer")

    @property
    def num_layer_slots(self) -> int:
        return self.model.num_layers + 2

    def chunk_bytes(self, chunk: Chunk) -> float:
        layer = chunk[0]
        if layer in (0, self.model.num_layers + 1):
            params = self.model.vocab_size * self.model.hidden_size
        else:
            params = self.model.layer_params
        return params * self.model.bytes_per_weight / self.slices

    def stage_layers(self, pp: int, stage: int) -> range:
        """Decoder layers (1-based) of one pipeline stage: contiguous, as even as possible."""
        num = self.model.num_layers
        lo = stage * num // pp
        hi = (stage + 1) * num // pp
        return range(lo + 1, hi + 1)

    def gpu_chunks(self, replica: Replica) -> dict[int, frozenset[Chunk]]:
        """The chunks each GPU of ``replica`` holds (GPUs in order: stage-major, then tensor rank)."""
        tp, pp = replica.config.tp, replica.config.pp
        if self.slices % tp:
            raise ConfigError(f"{self.slices} slices cannot be split over TP{tp}")
        per_rank = self.slices // tp
        out = {}
        for i, gpu in enumerate(replica.gpus):
            stage, rank = divmod(i, tp)
            layers = list(self.stage_layers(pp, stage))
            if stage == 0:
                layers.insert(0, 0)
            if stage == pp - 1:
                layers.append(self.model.num_layers + 1)
            rng = range(rank * per_rank, (rank + 1) * per_rank)
            out[gpu] = frozenset((layer, s) for layer in layers for s in rng)
        return out

    def holdings(self, replicas: Iterable[Replica]) -> dict[int, frozenset[Chunk]]:
        out: dict[int, frozenset[Chunk]] = {}
        for r in replicas:
            out.update(self.gpu_chunks(r))
        return out


def layout_for(model: ModelSpec, *replica_sets: Iterable[Replica]) -> WeightLayout:
    """The coarsest layout that every replica's TP degree divides."""
    slices = 1
    for replicas in replica_sets:
        for r in replicas:
            slices = math.lcm(slices, r.config.tp)
    return WeightLayout(model, slices)
