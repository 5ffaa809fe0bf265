"""Pure policies of the runtime: dispatch over live replicas, re-plan hysteresis, rate meter, metrics."""

from __future__ import annotations

from oserve.planner.dispatch_policy import DispatchState, DispatchTable
from oserve.runtime.dispatch_policy import Outcome, ReplicaView, choose
from oserve.runtime.metrics import Metrics
from oserve.runtime.rate_meter import RateMeter
from oserve.runtime.replan_policy import ReplanConfig, ReplanState, decide, drift


def views(*specs):
    return [ReplicaView(i, accepting, inflight, cap) for i, (accepting, inflight, cap) in enumerate(specs)]


def test_sustained_load_follows_the_plans_fractions():
    table = DispatchTable.from_fractions([[0.75, 0.25]])
    state = DispatchState.initial(table)
    inflight = [0, 0]
    for _ in range(400):  # nothing completes: outstanding counts settle in the plan's ratio
        decision, state = choose(table, state, 0, views((True, inflight[0], 1000),
                                                        (True, inflight[1], 1000)))
        inflight[decision.index] += 1
    assert abs(inflight[0] - 300) <= 2 and abs(inflight[1] - 100) <= 2


def test_busy_replica_is_avoided_and_full_replica_never_chosen():
    table = DispatchTable.from_fractions([[0.5, 0.5]])
    state = DispatchState.initial(table)
    decision, _ = choose(table, state, 0, views((True, 6, 8), (True, 0, 8)))
    assert decision.index == 1
    decision, _ = choose(table, state, 0, views((True, 0, 8), (True, 8, 8)))
    assert decision.index == 0


def test_dead_planned_replica_spills_to_an_open_one():
    table = DispatchTable.from_fractions([[1.0, 0.0]])
    decision, _ = choose(table, DispatchState.initial(table), 0, views((False, 0, 8), (True, 3, 8)))
    assert (decision.outcome, decision.index) == (Outcome.CHOSEN, 1)


def test_no_replica_and_overloaded_outcomes():
    table = DispatchTable.from_fractions([[0.5, 0.5]])
    state = DispatchState.initial(table)
    assert choose(table, state, 0, views((False, 0, 8), (False, 0, 8)))[0].outcome is Outcome.NO_REPLICA
    assert choose(table, state, 0, views((True, 8, 8), (True, 8, 8)))[0].outcome is Outcome.OVERLOADED


def test_replan_needs_persistent_drift_and_respects_cooldown():
    config = ReplanConfig(mix_threshold=0.15, confirm_checks=3, cooldown_s=100.0)
    planned, shifted = (1.0, 1.0), (1.8, 0.2)
    state = ReplanState()
    for i in range(2):
        d = decide(config, state, planned, shifted, now_s=10.0 * i)
        assert not d.should_replan
        state = d.state
    d = decide(config, state, planned, shifted, now_s=20.0)
    assert d.should_replan and d.state.last_switch_s == 20.0
    state = d.state
    for i in range(5):  # within the cooldown the same drift does not switch again
        d = decide(config, state, planned, shifted, now_s=30.0 + i)
        state = d.state
        assert not d.should_replan


def test_noise_within_band_resets_the_drift_count():
    config = ReplanConfig(confirm_checks=2)
    d1 = decide(config, ReplanState(), (1.0, 1.0), (1.8, 0.2), 0.0)
    d2 = decide(config, d1.state, (1.0, 1.0), (1.05, 0.95), 1.0)
    assert d2.state.num_drifted_checks == 0 and not d2.should_replan


def test_volume_drift_and_mix_distance():
    assert drift((1.0, 1.0), (2.0, 2.0)) == (0.0, 2.0)
    mix, ratio = drift((1.0, 0.0), (0.0, 1.0))
    assert mix == 1.0 and ratio == 1.0
    d = decide(ReplanConfig(confirm_checks=1, cooldown_s=0.0), ReplanState(), (1.0, 1.0), (3.0, 3.0), 0.0)
    assert d.should_replan


def test_thin_traffic_never_replans():
    d = decide(ReplanConfig(confirm_checks=1), ReplanState(), (1.0, 1.0), (0.0, 0.01), 0.0)
    assert not d.should_replan


def test_rate_meter_windows_per_type():
    meter = RateMeter(num_types=2, window_s=10.0)
    for i in range(20):
        meter.record(i % 2, now_s=i * 0.5)
    assert meter.rates_rps(10.0) == (1.0, 1.0)
    assert meter.rates_rps(17.0) == (0.3, 0.3)  # arrivals before 7.0 s have left the window
    assert meter.observed_s(100.0) == 10.0


def test_metrics_render_prometheus_text():
    metrics = Metrics()
    metrics.inc("oserve_requests_total", (("type", "a"), ("replica", "r0"), ("status", "ok")))
    metrics.observe("oserve_request_latency_seconds", (("type", "a"), ("replica", "r0")), 0.003)
    metrics.gauges["oserve_plan_version"] = lambda: {(): 2.0}
    text = metrics.render()
    assert 'oserve_requests_total{type="a",replica="r0",status="ok"} 1' in text
    assert 'oserve_request_latency_seconds_bucket{type="a",replica="r0",le="0.005"} 1' in text
    assert 'oserve_request_latency_seconds_bucket{type="a",replica="r0",le="0.001"} 0' in text
    assert "oserve_plan_version 2" in text
    assert metrics.counter("oserve_requests_total", status="ok") == 1


def test_online_classifier_matches_the_planners_vectorised_typing(conv_types):
    import numpy as np

    from oserve.runtime.router import online_classifier

    classify = online_classifier(conv_types)
    lengths = np.unique(np.geomspace(1, 200_000, 3000).astype(int))
    expected = conv_types.classify_online(lengths)
    assert [classify(int(n)) for n in lengths] == expected.tolist()


def test_spillover_never_spills_onto_a_closed_replica():
    table = DispatchTable.from_fractions([[1.0, 0.0, 0.0]])
    state = DispatchState.initial(table)
    replicas = [ReplicaView(0, True, 5, 8, num_queued=3), ReplicaView(1, False, 0, 8, num_queued=0),
                ReplicaView(2, True, 1, 8, num_queued=0)]
    decision, _ = choose(table, state, 0, replicas, policy="spillover")
    assert decision.index == 2
    decision, _ = choose(table, state, 0, replicas, policy="least-outstanding")
    assert decision.index == 0


def test_weighted_random_uses_the_injected_generator():
    import numpy as np

    table = DispatchTable.from_fractions([[0.5, 0.5]])
    picks = [choose(table, DispatchState.initial(table), 0, views((True, 0, 8), (True, 0, 8)),
                    "weighted-random", np.random.default_rng(7))[0].index for _ in range(5)]
    again = [choose(table, DispatchState.initial(table), 0, views((True, 0, 8), (True, 0, 8)),
                    "weighted-random", np.random.default_rng(7))[0].index for _ in range(5)]
    assert picks == again
