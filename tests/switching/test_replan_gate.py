"""The drift gate in front of the cost-aware policy: persistent drift, cooldown, thin traffic."""

from oserve.switching.replan_gate import ReplanConfig, drift, gate


def test_gate_needs_persistent_drift_and_respects_cooldown():
    config = ReplanConfig(mix_threshold=0.15, confirm_checks=3, cooldown_s=100.0)
    planned, shifted = (1.0, 1.0), (1.8, 0.2)
    count = 0
    for i in range(2):
        g = gate(config, count, planned, shifted, None, now_s=10.0 * i)
        assert not g.is_open and g.num_drifted_checks == i + 1
        count = g.num_drifted_checks
    g = gate(config, count, planned, shifted, None, now_s=20.0)
    assert g.is_open and g.num_drifted_checks == 0 and "drift" in g.reason
    count = 0
    for i in range(5):  # a switch at 20 s: within the cooldown the same drift does not open again
        g = gate(config, count, planned, shifted, 20.0, now_s=30.0 + 10 * i)
        count = g.num_drifted_checks
        assert not g.is_open
    assert g.reason == "cooling down"
    assert gate(config, count, planned, shifted, 20.0, now_s=121.0).is_open


def test_noise_within_band_resets_the_drift_count():
    config = ReplanConfig(confirm_checks=2)
    g1 = gate(config, 0, (1.0, 1.0), (1.8, 0.2), None, 0.0)
    assert g1.num_drifted_checks == 1
    g2 = gate(config, g1.num_drifted_checks, (1.0, 1.0), (1.05, 0.95), None, 1.0)
    assert g2.num_drifted_checks == 0 and not g2.is_open and g2.reason == "within hysteresis band"


def test_volume_drift_and_mix_distance():
    assert drift((1.0, 1.0), (2.0, 2.0)) == (0.0, 2.0)
    mix, ratio = drift((1.0, 0.0), (0.0, 1.0))
    assert mix == 1.0 and ratio == 1.0
    config = ReplanConfig(confirm_checks=1, cooldown_s=0.0)
    assert gate(config, 0, (1.0, 1.0), (3.0, 3.0), None, 0.0).is_open       # x3 volume
    assert not gate(config, 0, (1.0, 1.0), (1.4, 1.4), None, 0.0).is_open   # x1.4: inside x1.5


def test_thin_traffic_never_opens():
    g = gate(ReplanConfig(confirm_checks=1), 0, (1.0, 1.0), (0.0, 0.01), None, 0.0)
    assert not g.is_open and g.reason == "too little traffic"
