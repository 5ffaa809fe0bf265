import pytest

from oserve.common.errors import ConfigError
from oserve.switching import Destination, InflightRequest, KvMigrationParams, plan_kv_migration

P = KvMigrationParams(drain_budget_s=3.0, tpot_s=0.03, headroom_frac=0.1)


def test_short_requests_drain_long_ones_migrate_within_headroom():
    inflight = [InflightRequest(1, 0, 500, 50), InflightRequest(2, 0, 2000, 800),
                InflightRequest(3, 0, 1000, 400), InflightRequest(4, 1, 3000, 1000)]
    dests = [Destination(5, free_kv_tokens=4000, capacity_kv_tokens=10000),
             Destination(6, free_kv_tokens=3500, capacity_kv_tokens=10000)]
    plan = plan_kv_migration(inflight, dests, kv_bytes_per_token=1000.0, params=P)
    assert plan.drain == (1,)
    moved = {m.req_id: m for m in plan.migrations}
    assert set(moved) | set(plan.requeue) == {2, 3, 4}
    for d in dests:
        used = sum(moved[r].kv_tokens + inflight[r - 1].remaining_tokens
                   for r in moved if moved[r].dst_replica == d.replica_id)
        assert used <= d.free_kv_tokens - 0.1 * d.capacity_kv_tokens
    assert plan.total_bytes == pytest.approx(sum(m.kv_tokens for m in plan.migrations) * 1000.0)


def test_no_room_means_requeue():
    plan = plan_kv_migration([InflightRequest(1, 0, 5000, 1000)],
                             [Destination(1, 2000, 10000)], 1000.0, P)
    assert plan.requeue == (1,) and not plan.migrations and plan.duration_s == 0


def test_bad_params_rejected():
    with pytest.raises(ConfigError):
        KvMigrationParams(tpot_s=0)
