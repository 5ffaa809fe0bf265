"""A replica as the runtime holds it: the plan's replica, its engine, its state and its load."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from oserve.planner.plan import Replica
from oserve.runtime.engine import Engine


class ReplicaState(Enum):
    STARTING = "starting"
    ACTIVE = "active"      # takes new requests
    DRAINING = "draining"  # finishes what it has, takes nothing new
    STOPPED = "stopped"
    DEAD = "dead"          # failed; the router no longer sends it anything


@dataclass(eq=False)
class ReplicaHandle:
    """Mutable runtime state of one replica. ``num_inflight`` counts requests the router sent it."""

    replica: Replica
    engine: Engine
    max_inflight: int = 64
    state: ReplicaState = ReplicaState.STARTING
    num_inflight: int = 0
    num_served: int = 0
    num_failed: int = 0
    prefill_tokens: int = 0  # prompt tokens of its requests still waiting for their first token
    num_prefilling: int = 0  # those requests
    # a prefill replica's requests handed off and still decoding on its group: outstanding for the
    # dispatch (as a colocated replica's requests are until their last token), not for its admission
    num_downstream: int = 0

    @property
    def num_decoding(self) -> int:
        return self.num_inflight - self.num_prefilling

    @property
    def name(self) -> str:
        return f"r{self.replica.replica_id}"

    @property
    def is_accepting(self) -> bool:
        return self.state is ReplicaState.ACTIVE

    def key(self) -> tuple:
        """Identity across plans: same GPUs and same configuration means the same replica."""
        return (self.replica.gpus, self.replica.config)


__all__ = ["ReplicaHandle", "ReplicaState"]
