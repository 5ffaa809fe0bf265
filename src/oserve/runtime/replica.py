"""A replica as the runtime holds it: the plan's replica, its engine, its state and its load."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
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
    # set when a switch drains the replica: its requests still waiting for their first token go back to
    # the router to be dispatched again (what the simulator does with a stopping replica's queue)
    drain_started: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # its generations past their first token that a switch can hand over to another replica
    # (``router.RoutedStream``, engines with ``supports_continuation``)
    streams: set = field(default_factory=set, repr=False)

    @property
    def num_decoding(self) -> int:
        return self.num_inflight - self.num_prefilling

    @property
    def name(self) -> str:
        return f"r{self.replica.replica_id}"

    @property
    def is_accepting(self) -> bool:
        return self.state is ReplicaState.ACTIVE

    def start_draining(self) -> None:
        """Take nothing new; hand the requests without a first token back to the router."""
        self.state = ReplicaState.DRAINING
        self.drain_started.set()

    def key(self) -> tuple:
        """Identity across plans: same GPUs and same configuration means the same replica."""
        return (self.replica.gpus, self.replica.config)


__all__ = ["ReplicaHandle", "ReplicaState"]
