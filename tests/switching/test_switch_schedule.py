"""The timeline of one switch (``switching.switch_schedule``), shared by the policy's price, the
simulator and the server: a started replica on a stopping replica's GPUs loads only after that
replica's bounded drain; one on free GPUs at once; all join at the priced duration."""

import pytest

from oserve.common.errors import ConfigError
from oserve.planner.plan import Replica
from oserve.switching.switch_schedule import (
    SwitchSchedule,
    finishes_in_drain,
    gpu_successors,
    switch_schedule,
)
from oserve.switching.transition import Transition

from .factories import cfg


def _transition() -> Transition:
    current = (Replica(0, (0, 1), cfg(2)), Replica(1, (2, 3), cfg(2)), Replica(2, (4,), cfg(1)))
    # replica 0 kept; 1 and 2 stop; new 1 takes GPU 3 (of old 1), new 2 takes GPUs 4-5 (old 2 and a
    # free one), new 3 takes free GPUs 6-7
    target = (Replica(0, (0, 1), cfg(2)), Replica(1, (3,), cfg(1)), Replica(2, (4, 5), cfg(2)),
              Replica(3, (6, 7), cfg(2)))
    return Transition(current, target, ((0, 0),))


def test_successors_are_the_started_replicas_on_a_stopping_replicas_gpus():
    assert gpu_successors(_transition()) == {1: (1,), 2: (2,), 3: ()}


def test_successors_load_after_the_drain_deadline_and_everyone_joins_at_the_priced_duration():
    sched = switch_schedule(_transition(), drain_s=5.0, transfer_s=13.0, restart_s=5.0)
    assert sched.drain_deadline_s == 5.0 and sched.ready_s == 23.0 and sched.reuses_gpus
    assert [sched.load_start_s(i) for i in (1, 2, 3)] == [5.0, 5.0, 0.0]
    assert [sched.startup_s(i) for i in (1, 2, 3)] == [18.0, 18.0, 23.0]
    for i in (1, 2, 3):  # a successor's load never starts before the GPUs it takes are free
        assert sched.load_start_s(i) >= (sched.drain_deadline_s if gpu_successors(_transition())[i] else 0)
    no_reuse = Transition(_transition().current[:1], _transition().target[:1] + _transition().target[3:],
                          ((0, 0),))
    assert not switch_schedule(no_reuse, 5.0, 1.0, 5.0).reuses_gpus


def test_a_schedule_that_joins_before_its_drain_ends_is_refused():
    with pytest.raises(ConfigError, match="drain deadline"):
        SwitchSchedule(5.0, 4.0, {})


def test_what_finishes_within_the_drain():
    assert finishes_in_drain(166, 0.03, 5.0) and not finishes_in_drain(167, 0.03, 5.0)
    assert finishes_in_drain(0, 0.03, 0.0)
