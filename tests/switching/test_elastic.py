"""The elastic choice: shrink only within the loss allowance, grow when short of the target."""

from oserve.switching.elastic import ElasticOption, choose


def _choose(options, current_gpus, meets):
    return choose(options, current_gpus, meets, good_cur=10.0, horizon_s=600, hysteresis=0.2,
                  min_gain_requests=1.0, max_loss_frac=0.03)


def test_a_fleet_that_meets_the_target_only_shrinks_and_only_cheaply():
    cheap = ElasticOption(0, 4, 0.0, 10.0, 10.0)       # loses 10 req while switching
    costly = ElasticOption(1, 2, 0.0, 10.0, 9.0)       # loses 1 req/s for 600 s
    bigger = ElasticOption(2, 16, 100.0, 0.0, 10.0)
    chosen, _ = _choose([cheap, costly, bigger], 8, True)
    assert chosen is cheap
    chosen, why = _choose([costly, bigger], 8, True)
    assert chosen is None and "meets the target" in why


def test_a_fleet_short_of_the_target_grows_when_it_pays():
    grow = ElasticOption(0, 12, 3000.0, 50.0, 10.0)
    no_pay = ElasticOption(1, 16, 10.0, 50.0, 10.0)
    assert _choose([no_pay, grow], 8, False)[0] is grow
    assert _choose([no_pay], 8, False)[0] is None
