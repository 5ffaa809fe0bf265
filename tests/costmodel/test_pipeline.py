"""Pipeline bubbles: the micro-batch split, the ring's round against the exact recurrence and the
fill/drain closed form, and the cost model's PP step times built on them."""

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.pipeline import (
    pieces,
    pipeline_makespan_s,
    ring_round_s,
    split_micro_batches,
)
from oserve.costmodel.replica_config import ReplicaConfig

H100 = "H100-80GB"


@pytest.mark.parametrize("m,p", [(1, 4), (2, 4), (4, 4), (8, 4), (4, 2), (3, 8)])
def test_synchronous_batch_pays_fill_and_drain(m, p):
    # closed form: m equal micro-batches through p stages take (m + p - 1) stage times,
    # efficiency m / (m + p - 1) of the pipeline's m stage times of work per stage
    t = 0.01
    makespan = pipeline_makespan_s([t] * m, p)
    assert makespan == pytest.approx((m + p - 1) * t)
    assert m * t / makespan == pytest.approx(m / (m + p - 1))


@pytest.mark.parametrize("m,p", [(1, 4), (2, 4), (4, 4), (3, 8), (2, 2)])
def test_in_flight_batches_have_no_fill_and_drain_in_steady_state(m, p):
    # vLLM keeps the batches in flight: after the first fill, a round of m <= p equal micro-batches
    # takes p stage times, so the bubble is the idle stages (throughput m/p), not (p - 1) per round
    t = 0.01
    rounds = [pipeline_makespan_s([t] * m, p, r) for r in (5, 6)]
    assert rounds[1] - rounds[0] == pytest.approx(p * t)
    assert ring_round_s([t] * m, p) == pytest.approx(p * t)
    assert rounds[0] == pytest.approx((4 * p + m + p - 1) * t)  # one fill, then full rounds


def test_ring_round_matches_the_exact_recurrence_for_uneven_micro_batches():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = int(rng.integers(2, 9))
        m = int(rng.integers(1, 2 * p))
        times = list(rng.uniform(0.001, 0.05, m) * (rng.uniform(size=m) < 0.3) * 20 + 0.001)
        steady = pipeline_makespan_s(times, p, 12) - pipeline_makespan_s(times, p, 11)
        assert ring_round_s(times, p) == pytest.approx(steady, rel=1e-9)
    # the largest micro-batch's trip dominates: one chunk of 8x the decodes' stage time
    assert ring_round_s([0.08, 0.01, 0.01, 0.01], 4) == pytest.approx(4 * 0.08)


def test_split_keeps_items_whole_and_balances_tokens():
    # 10 decodes over 4 stages: micro-batches of 3, 3, 2, 2
    mbs = split_micro_batches((), 10, 4, 8192)
    assert sorted(mb.decodes for mb in mbs) == [2, 2, 3, 3]
    # 2 decodes cannot fill 4 stages
    assert [mb.decodes for mb in split_micro_batches((), 2, 4, 8192)] == [1, 1]
    # one 2000-token chunk and 30 decodes: the chunk alone, the decodes spread over the rest
    mbs = split_micro_batches(((2000.0, 0.0),), 30, 4, 8192)
    chunked = [mb for mb in mbs if mb.chunks]
    assert len(chunked) == 1 and chunked[0].decodes == 0
    assert sum(mb.decodes for mb in mbs) == 30 and max(mb.tokens for mb in mbs) == 2000
    # a chunk above one batch's budget becomes pieces after each other's cached tokens
    assert pieces(((5000.0, 100.0),), 2048) == [(2048, 100.0), (2048, 2148.0), (904.0, 4196.0)]
    mbs = split_micro_batches(((5000.0, 100.0),), 3, 4, 2048)
    assert sorted(mb.tokens for mb in mbs) == [3, 904, 2048, 2048]  # the decodes fill the 4th


def test_pieces_go_to_the_first_least_loaded_micro_batch():
    """The split's greedy against the plain loop (each piece, largest first, onto the lowest-index
    micro-batch of least load): equal pieces, ties and uneven chunks."""
    rng = np.random.default_rng(2)
    for _ in range(200):
        pp, budget = int(rng.choice([2, 3, 4, 8])), int(rng.choice([256, 512, 2048]))
        sizes = rng.choice([float(budget), 300.0, 17.0, float(rng.integers(1, 3 * budget))],
                           int(rng.integers(1, 7)))
        chunks = tuple((float(c), float(rng.integers(0, 900))) for c in sizes)
        parts = pieces(chunks, budget)
        m = min(pp, len(parts))
        load, owned = [0.0] * m, [[] for _ in range(m)]
        for piece in sorted(parts, key=lambda x: -x[0]):
            j = min(range(m), key=lambda i: load[i])
            owned[j].append(piece)
            load[j] += piece[0]
        got = split_micro_batches(chunks, 0, pp, budget)
        assert [mb.chunks for mb in got] == [tuple(o) for o in owned if o]


def test_water_fill_is_one_at_a_time_onto_the_lightest():
    from oserve.costmodel.pipeline import _water_fill
    rng = np.random.default_rng(1)
    for _ in range(500):
        m = int(rng.integers(1, 9))
        load = [float(rng.choice([0, 0, rng.integers(0, 3000)])) for _ in range(m)]
        count = int(rng.integers(0, 600))
        ref, level = [0] * m, list(load)
        for _ in range(count):
            j = min(range(m), key=lambda i: level[i])
            level[j] += 1
            ref[j] += 1
        got = _water_fill(load, count)
        assert sum(got) == count
        assert sorted(x + y for x, y in zip(load, got)) == sorted(level)


@pytest.fixture(scope="module")
def cm70():
    return CostModel(load_models().get("llama-2-70b"))


def test_one_chunk_is_not_split_over_the_pipeline(cm70):
    # a lone 4096-token chunk on PP4 costs its whole trip through the 4 stages (about the time of all
    # layers on one stage's GPUs), not 4 stage times of a quarter of it
    cfg = ReplicaConfig(H100, 2, 4)
    chunk = ((4096.0, 0.0),)
    step = cm70.step_time_s(cfg, chunk)
    stage = cm70.stage_time_s(cfg, chunk)
    assert step == pytest.approx(4 * stage + 3 * _hop(cm70, cfg, 4096) + cm70.params.step_overhead_s)
    even = 4 * cm70.stage_time_s(cfg, ((1024.0, 0.0),))
    assert step > 3 * even


def test_decode_round_is_set_by_the_largest_micro_batch(cm70):
    cfg = ReplicaConfig(H100, 2, 4)
    for batch in (1, 3, 4, 5, 64, 65):
        largest = -(-batch // 4)
        expected = (4 * cm70.stage_time_s(cfg, (), largest, 1000.0 * largest)
                    + 3 * _hop(cm70, cfg, largest) + cm70.params.step_overhead_s)
        assert cm70.decode_step_s(cfg, batch, 1000.0 * batch) == pytest.approx(expected)
    # fewer sequences than stages: adding sequences up to pp costs nothing but hops (idle stages)
    t1, t4 = cm70.decode_step_s(cfg, 1, 1000), cm70.decode_step_s(cfg, 4, 4000)
    assert t4 == pytest.approx(t1, rel=1e-6)


def test_budget_caps_each_micro_batch(cm70):
    # PP2 at a 2048-token budget: a round carries two 2048-token pieces of one prompt, in parallel
    cfg = ReplicaConfig(H100, 4, 2, max_num_batched_tokens=2048)
    two = cm70.step_time_s(cfg, ((4096.0, 0.0),))
    piece = cm70.stage_time_s(cfg, ((2048.0, 2048.0),))
    assert two == pytest.approx(2 * piece + _hop(cm70, cfg, 2048) + cm70.params.step_overhead_s)
    assert cfg.timing == cfg
    assert ReplicaConfig(H100, 4, 1, max_num_batched_tokens=2048).timing == ReplicaConfig(H100, 4, 1)


def _hop(cm, cfg, tokens):
    from oserve.costmodel.network import send_recv_s
    return send_recv_s(tokens * cm.model.hidden_size * 2.0, True, cm.gpu(cfg).intra_node_gbps)
