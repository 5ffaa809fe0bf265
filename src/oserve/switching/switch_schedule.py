"""The timeline of one switch, in seconds after the decision: what the policy prices, the simulator
executes and the server follows.

A GPU holds one engine at a time: a replica a switch starts on GPUs that a stopping replica holds can
load its weights only once that replica has let go of every sequence. So a switch runs, for every
stopping replica, a bounded drain (``drain_s``: requests that finish within it finish in place, longer
ones are handed over at once) and at its deadline hands over whatever it still runs (the simulator
migrates the KV or re-queues for recompute, the server continues the stream on another replica by
recompute); only then are its GPUs free. Started replicas on those GPUs load from the deadline on;
those on free GPUs from the decision. Every started replica joins at ``ready_s`` = drain + weight
transfer + restart, the switch duration the policy prices; for a successor on reused GPUs that is its
load (transfer + restart) after the deadline, so the ordering is physically possible by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.switching.transition import Transition


@dataclass(frozen=True)
class SwitchSchedule:
    drain_deadline_s: float  # stopping replicas have handed over everything they ran
    ready_s: float           # every started replica serves (the priced switch duration)
    # started replica id -> ids of the stopping replicas whose GPUs it takes (it loads after them)
    waits_for: dict[int, tuple[int, ...]]

    def __post_init__(self) -> None:
        if self.drain_deadline_s < 0 or self.ready_s < self.drain_deadline_s:
            raise ConfigError(f"switch schedule: drain deadline {self.drain_deadline_s:g} s must be >= 0 "
                              f"and <= the join at {self.ready_s:g} s")

    def load_start_s(self, started_id: int) -> float:
        """When a started replica may begin to load: at the drain deadline on reused GPUs, else at once."""
        return self.drain_deadline_s if self.waits_for.get(started_id) else 0.0

    def startup_s(self, started_id: int) -> float:
        """How long a started replica takes from its load start to serving (weights + restart)."""
        return self.ready_s - self.load_start_s(started_id)

    @property
    def reuses_gpus(self) -> bool:
        return any(self.waits_for.values())


def gpu_successors(transition: Transition) -> dict[int, tuple[int, ...]]:
    """Each started replica's predecessors: the stopping replicas holding any of its GPUs."""
    out = {}
    for new in transition.started:
        olds = tuple(r.replica_id for r in transition.stopped if set(r.gpus) & set(new.gpus))
        out[new.replica_id] = olds
    return out


def switch_schedule(transition: Transition, drain_s: float, transfer_s: float,
                    restart_s: float) -> SwitchSchedule:
    return SwitchSchedule(drain_s, drain_s + transfer_s + restart_s, gpu_successors(transition))


def finishes_in_drain(remaining_tokens: int, tpot_s: float, drain_s: float) -> bool:
    """A running request of a stopping replica finishes in place when its remaining decode fits the
    drain budget; a longer one is handed over at once (both sides use this rule)."""
    return remaining_tokens * tpot_s <= drain_s


__all__ = ["SwitchSchedule", "finishes_in_drain", "gpu_successors", "switch_schedule"]
