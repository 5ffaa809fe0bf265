"""The SLO spill rule (``planner.spill_rule``): known answers of its prediction and its choices."""

from __future__ import annotations

import math

import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.spill_rule import ReplicaSpeed, SpillRule, predict, replica_speeds, spill_choice
from oserve.workload.slo import Slo

# budget 1000 tokens, 8 seats, d(B) = 0.01 + 0.001 B s, 0.1 ms per prompt token
SPEED = ReplicaSpeed(1000, 8, 0.01, 0.001, 1e-4)


def test_prediction_known_answer():
    # 100 decoding leave 900 prompt tokens a step; 1500 queued + 300 own = 1800 tokens = 2 steps
    p = predict(SPEED, 1500, 100, 300)
    assert p.ttft_s == pytest.approx(2 * (0.01 + 0.1) + 1800 * 1e-4)  # 0.40 s
    assert p.tpot_s == pytest.approx(0.01 + 0.101 + 900 * 1e-4)  # d(101) + a full 900-token chunk
    idle = predict(SPEED, 0, 0, 200)  # an idle replica: one step of its own prompt
    assert idle.ttft_s == pytest.approx(0.011 + 0.02)
    assert idle.tpot_s == pytest.approx(0.011 + 0.02)


def _rule(*speeds, ttft_s=0.5, tpot_s=0.1):
    return SpillRule((Slo(ttft_s, tpot_s),), tuple(speeds))


def test_stays_on_the_primary_while_its_ttft_is_within_half_the_slo():
    # predicted 2 steps of 0.011 s + 0.18 s = 0.202 s on the primary, 0.041 s on the idle replica
    assert spill_choice(_rule(SPEED, SPEED, ttft_s=0.41), 0, 300, 0, [1500, 0], [0, 0]) == 0
    assert spill_choice(_rule(SPEED, SPEED, ttft_s=0.40), 0, 300, 0, [1500, 0], [0, 0]) == 1


def test_spills_to_the_replica_with_the_least_predicted_ttft_that_meets_the_slo():
    rule = _rule(SPEED, SPEED, SPEED)
    # primary: 9,700 queued tokens = 10 steps, ~1.1 s > 0.5 s; r1 has 2,000 queued (0.25 s), r2 none
    assert spill_choice(rule, 0, 300, 0, [9700, 2000, 0], [0, 0, 0]) == 2
    assert spill_choice(rule, 0, 300, 0, [9700, 2000, 6000], [0, 0, 0]) == 1


def test_no_replica_meets_the_slo_keeps_the_primary():
    rule = _rule(SPEED, SPEED)
    assert spill_choice(rule, 0, 300, 0, [9700, 9000], [0, 0]) == 0


def test_closed_full_and_unknown_replicas_are_never_spill_targets():
    rule = _rule(SPEED, SPEED, None)
    state = ([9700, 0, 0], [0, 0, 0])
    assert spill_choice(rule, 0, 300, 0, *state) == 1
    assert spill_choice(rule, 0, 300, 0, *state, is_open=[True, False, True]) == 0  # r1 closed, r2 unknown
    assert spill_choice(rule, 0, 300, 0, [9700, 0, 0], [0, 8, 0]) == 0  # r1's 8 seats all decoding
    assert spill_choice(rule, 0, 300, 2, [0, 0, 0], [0, 0, 0]) == 2  # unknown primary: no prediction


def test_a_target_whose_tpot_would_miss_and_be_worse_than_the_primary_is_refused():
    slow_chunks = ReplicaSpeed(8192, 8, 0.01, 0.001, 1e-4)  # a full 8,192-token chunk: +0.82 s a step
    rule = _rule(SPEED, slow_chunks, ttft_s=2.0)
    # primary: 30,000 tokens = 31 steps, ~3.4 s; the big-chunk replica: 300 tokens in one 0.04 s step,
    # a TPOT of 0.04 s: allowed
    assert spill_choice(rule, 0, 300, 0, [30000, 0], [0, 0]) == 1
    # with 8,000 tokens queued there its steps carry full chunks (TPOT ~0.83 s against the primary's
    # ~0.11 s and the SLO's 0.1 s) though its TTFT (~0.84 s) would meet the SLO: refused
    assert spill_choice(rule, 0, 300, 0, [30000, 8000], [0, 0]) == 0


def test_bad_input_is_a_config_error():
    rule = _rule(SPEED, SPEED)
    with pytest.raises(ConfigError, match="type 3"):
        spill_choice(rule, 3, 10, 0, [0, 0], [0, 0])
    with pytest.raises(ConfigError, match="2 replicas"):
        spill_choice(rule, 0, 10, 0, [0], [0])
    with pytest.raises(ConfigError):
        ReplicaSpeed(0, 8, 0.01, 0.0, 0.0)


def test_speeds_come_from_the_latency_models_step_times():
    cost = CostModel(load_models().get("llama-2-70b"))
    cfg = ReplicaConfig("H100-80GB", 4, max_num_batched_tokens=2048)
    (speed,) = replica_speeds(cost, [cfg])
    model = ReplicaLatencyModel(cost, cfg)
    assert speed.budget_tokens == 2048 and speed.max_seqs == model.max_seqs
    assert speed.decode_s(1) == pytest.approx(model.decode_s(1, 1024))
    assert speed.decode_s(model.max_seqs) == pytest.approx(model.decode_s(model.max_seqs, 1024))
    assert speed.prefill_s_per_token * 2048 == pytest.approx(model.chunk_extra_s(2048, 0))
    assert 0 < speed.prefill_s_per_token < 1e-3 and math.isfinite(speed.decode_base_s)
