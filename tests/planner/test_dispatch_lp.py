import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oserve.common.errors import InfeasiblePlanError
from oserve.planner.dispatch_lp import solve_dispatch


def test_known_optimum_two_groups():
    # group 0 only serves type 0 (10/s), group 1 serves both (type 0: 10/s, type 1: 5/s)
    cap = np.array([[10.0, 0.0], [10.0, 5.0]])
    sol = solve_dispatch(np.array([10.0, 2.5]), cap, np.array([1, 1]))
    # best: group 1 takes all of type 1 (0.5 of its time) and 2.5/s of type 0 (0.25 busy) -> 0.75 each
    assert sol.demand_scale == pytest.approx(1 / 0.75)
    assert sol.utilisation == pytest.approx([0.75, 0.75])
    assert sol.bottleneck.all()


def test_unserved_type_is_infeasible():
    with pytest.raises(InfeasiblePlanError, match="type 1"):
        solve_dispatch(np.array([1.0, 1.0]), np.array([[5.0, 0.0]]), np.array([2]))


def test_balance_spreads_slack():
    # type 0 can go anywhere; type 1 only to group 0, which becomes the bottleneck
    cap = np.array([[10.0, 1.0], [10.0, 0.0], [10.0, 0.0]])
    sol = solve_dispatch(np.array([6.0, 0.5]), cap, np.array([1, 1, 1]), balance=True)
    assert sol.bottleneck.tolist() == [True, False, False] or sol.utilisation[0] == max(sol.utilisation)
    assert sol.utilisation[1] == pytest.approx(sol.utilisation[2])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.data())
def test_dispatch_conserves_flow_and_respects_capacity(num_types, num_groups, data):
    cap = np.array(data.draw(st.lists(st.lists(st.floats(0.1, 50.0), min_size=num_types,
                                                max_size=num_types), min_size=num_groups,
                                       max_size=num_groups)))
    demand = np.array(data.draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 20.0)),
                                         min_size=num_types, max_size=num_types)))
    counts = np.array(data.draw(st.lists(st.integers(1, 4), min_size=num_groups, max_size=num_groups)))
    sol = solve_dispatch(demand, cap, counts, balance=data.draw(st.booleans()))
    assert np.all(sol.flow >= -1e-9)
    assert sol.flow.sum(axis=1) == pytest.approx(demand, abs=1e-6)  # conservation at scale 1
    if demand.sum() > 0:
        scaled_util = (sol.flow * sol.demand_scale / (cap * counts[:, None]).T).sum(axis=0)
        assert np.all(scaled_util <= 1 + 1e-5)  # at the max scale no replica exceeds its capacity
        assert scaled_util.max() == pytest.approx(1.0, abs=1e-6)  # and some replica is saturated
