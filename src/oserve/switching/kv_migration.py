"""Requests in flight on replicas that a switch stops: drain the short ones, migrate the long ones.

A request whose remaining decode fits in the drain budget (remaining tokens x time per output token)
finishes where it is while its replica takes no new work. A longer one moves its KV cache to a replica
that keeps serving, the one with the most free KV room after keeping ``headroom_frac`` of its capacity
free for new arrivals; a request no destination has room for is re-queued and prefilled again later.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.common.errors import ConfigError
from oserve.switching.switch_schedule import finishes_in_drain


@dataclass(frozen=True)
class InflightRequest:
    req_id: int
    replica_id: int
    context_tokens: int  # prompt + tokens generated so far: what the KV cache holds
    remaining_tokens: int


@dataclass(frozen=True)
class Destination:
    replica_id: int
    free_kv_tokens: int
    capacity_kv_tokens: int


@dataclass(frozen=True)
class Migration:
    req_id: int
    src_replica: int
    dst_replica: int
    kv_tokens: int
    num_bytes: float


@dataclass(frozen=True)
class KvMigrationPlan:
    drain: tuple[int, ...]
    migrations: tuple[Migration, ...]
    requeue: tuple[int, ...]
    total_bytes: float
    duration_s: float  # all migrations over one link of ``link_bytes_s`` per replica pair, in parallel


@dataclass(frozen=True)
class KvMigrationParams:
    drain_budget_s: float = 5.0
    tpot_s: float = 0.03
    headroom_frac: float = 0.1
    link_bytes_s: float = 33e9  # network rate between two GPUs (NCCL send/recv across nodes)

    def __post_init__(self) -> None:
        if self.drain_budget_s < 0 or self.tpot_s <= 0 or not 0 <= self.headroom_frac < 1:
            raise ConfigError("KV migration needs drain budget >= 0, TPOT > 0, headroom in [0, 1)")


def plan_kv_migration(inflight: list[InflightRequest], destinations: list[Destination],
                      kv_bytes_per_token: float, params: KvMigrationParams = KvMigrationParams()
                      ) -> KvMigrationPlan:
    room = {d.replica_id: d.free_kv_tokens - int(params.headroom_frac * d.capacity_kv_tokens)
            for d in destinations}
    drain, moves, requeue = [], [], []
    pair_bytes: dict[tuple[int, int], float] = {}
    # longest remaining work first: they gain the most from moving
    for req in sorted(inflight, key=lambda r: (-r.remaining_tokens, r.req_id)):
        if finishes_in_drain(req.remaining_tokens, params.tpot_s, params.drain_budget_s):
            drain.append(req.req_id)
            continue
        need = req.context_tokens + req.remaining_tokens  # the KV it will hold when done
        fits = [d for d, r in room.items() if r >= need]
        if not fits:
            requeue.append(req.req_id)
            continue
        dst = max(fits, key=lambda d: (room[d], -d))
        room[dst] -= need
        size = req.context_tokens * kv_bytes_per_token
        moves.append(Migration(req.req_id, req.replica_id, dst, req.context_tokens, size))
        pair_bytes[(req.replica_id, dst)] = pair_bytes.get((req.replica_id, dst), 0.0) + size
    duration = max(pair_bytes.values(), default=0.0) / params.link_bytes_s
    return KvMigrationPlan(tuple(sorted(drain)), tuple(moves), tuple(sorted(requeue)),
                           sum(m.num_bytes for m in moves), duration)
