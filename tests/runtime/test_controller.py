"""Controller: executes the shared control step's transitions losing no request, restarts dead replicas
with back-off, and keeps serving when the policy or a switch fails. All on a manual clock."""

from __future__ import annotations

import asyncio
import logging

import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.api import build_plan
from oserve.planner.placement import pack
from oserve.planner.problem import PlanningProblem
from oserve.runtime.clock import ManualClock
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.errors import EngineStartError
from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.replica import ReplicaState
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.runtime.static_plan import static_plan
from oserve.switching import ControlPolicy, LinkModel, ReplanConfig, SwitchContext, SwitchParams
from oserve.switching.transition import transition_to
from oserve.workload.request_types import TypeStats

from .factories import MODEL, TYPE_NAMES, FakeFleet, make_plan, make_runtime, run_clock, settle

H100 = "H100-80GB"
TYPES = (TypeStats("short", 300, 100, 600, 200, 100, 1.0),
         TypeStats("long", 3000, 400, 6000, 800, 100, 1.0))


async def serve_one(runtime: ServingRuntime, i: int) -> str:
    req = GenerationRequest(f"r{i}", 10, prompt="x" * (8 if i % 2 else 800))
    stream = await runtime.router.open(req, runtime.router.classify(2 if i % 2 else 200))
    try:
        return "".join([c.text async for c in stream])
    finally:
        await stream.aclose()


async def serve_typed(runtime: ServingRuntime, type_index: int, count: int = 1) -> None:
    for _ in range(count):
        stream = await runtime.router.open(GenerationRequest("q", 1, prompt="x"), type_index)
        async for _ in stream:
            pass


class LoggingFleet(FakeFleet):
    """Fake engines whose starts and stops are logged in order (``events``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[str] = []

    def __call__(self, replica):
        engine = super().__call__(replica)
        start, stop = engine.start, engine.stop

        async def logged_start():
            self.events.append(f"start {engine.info.name}")
            await start()

        async def logged_stop():
            self.events.append(f"stop {engine.info.name}")
            await stop()

        engine.start, engine.stop = logged_start, logged_stop
        return engine


def test_plan_switch_under_load_loses_no_request():
    async def main():
        clock = ManualClock()
        fleet = LoggingFleet(FakeCost(decode_s_per_token=0.002), clock=clock)
        runtime = ServingRuntime(MODEL, make_plan(2), fleet, lambda n: int(n >= 100),
                                 config=RuntimeConfig(max_inflight_per_replica=512), clock=clock)
        new_plan = static_plan(MODEL, [ReplicaConfig("cpu"), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                               [[1.0, 0.0], [0.0, 1.0]], (1.0, 1.0))
        await runtime.controller.start()
        old_handles = list(runtime.router.table.handles)
        tasks = [asyncio.create_task(serve_one(runtime, i)) for i in range(200)]
        await settle()
        # the clock has not moved: all 200 are in flight on the old plan, on both replicas
        in_flight = [h.num_inflight for h in old_handles]
        switch = asyncio.create_task(runtime.controller.apply(new_plan, "test switch"))
        await settle()
        tasks += [asyncio.create_task(serve_one(runtime, i)) for i in range(200, 300)]
        await run_clock(clock, lambda: switch.done() and all(t.done() for t in tasks))
        results = [t.result() for t in tasks]
        await runtime.stop()
        return runtime, fleet, old_handles, switch.result(), results, in_flight

    runtime, fleet, old_handles, table, results, in_flight = asyncio.run(main())
    assert in_flight == [100, 100]
    assert all(r == " ok" * 10 for r in results), [r for r in results if r != " ok" * 10][:3]
    assert table.version == 2
    # replica 0 (cpu TP1 on device 0) is in both plans and kept; replica 1 was drained and stopped
    assert table.handles[0] is old_handles[0]
    assert old_handles[1].state is ReplicaState.STOPPED and old_handles[1].num_inflight == 0
    assert old_handles[1].num_served == 100  # it finished what it held before stopping
    assert len(fleet.engines) == 3
    # the new TP2 replica is placed on device 1, which the stopped replica held: break before make
    assert fleet.events[2:4] == ["stop fake-r1-1", "start fake-r1-2"]
    served = runtime.metrics.counter("oserve_requests_total", status="ok")
    assert served == 300 and runtime.metrics.counter("oserve_rejected_total") == 0
    assert [r.version for r in runtime.controller.history] == [1, 2]


# ---- the shared control step, executed -------------------------------------------------------------

@pytest.fixture(scope="module")
def half_cluster():
    """Llama-2-13B on 2x8 H100 running 2 TP4 replicas, and a planner that proposes 4 TP4 replicas."""
    cluster, cost = parse_cluster("2x8xH100"), CostModel(load_models().get("llama-2-13b"))
    problem = PlanningProblem(cluster, cost, list(TYPES))
    tp4 = ReplicaConfig(H100, 4)

    def counts(n: int) -> tuple[int, ...]:
        return tuple(n if c == tp4 else 0 for c in problem.configs)

    def planner(types, _current):
        return build_plan(PlanningProblem(cluster, cost, list(types)), counts(4), "fixed", 0.0)

    from oserve.switching.policy import place_plan

    initial = place_plan(build_plan(problem, counts(2), "initial", 0.0), tuple(pack({tp4: 2}, cluster)))
    capacity_rps = [t.rate_rps * problem.scale(counts(2)) for t in TYPES]
    context = SwitchContext(cluster, cost, TYPES, LinkModel(cluster), planner)
    return context, initial, capacity_rps


def _runtime(context, initial, gate=None, clock=None, fleet=None, **config):
    clock = clock or ManualClock()
    policy = ControlPolicy(context, SwitchParams(min_gap_s=0, horizon_s=3600), gate=gate,
                           min_total_rps=0.05)
    runtime = ServingRuntime(MODEL, initial, fleet or FakeFleet(), None, policy,
                             RuntimeConfig(window_s=10.0, check_interval_s=1.0, **config), clock)
    return runtime, clock


def test_the_controller_executes_the_policys_transition(half_cluster):
    """Load beyond what the 2 replicas serve within the SLO (the latency model: none of it) and within
    what 4 serve: after the drift gate confirms, the policy switches to 4 replicas; the 2 kept replicas
    keep their handles (plan_transition's choice), 2 new ones start."""
    context, initial, capacity_rps = half_cluster
    per_window = [round(2.0 * r * 10.0) for r in capacity_rps]  # 2x throughput capacity over 10 s

    async def main():
        runtime, clock = _runtime(context, initial, gate=ReplanConfig(confirm_checks=2, cooldown_s=0.0))
        await runtime.controller.start()
        before = list(runtime.router.table.handles)
        steps = []
        for _ in range(3):
            for k, n in enumerate(per_window):
                await serve_typed(runtime, k, n)
            clock.advance(10.0)
            steps.append(await runtime.controller.check_once())
        await runtime.stop()
        return runtime, before, steps

    runtime, before, steps = asyncio.run(main())
    assert [s.decision.switch for s in steps] == [False, True, False]
    assert "drift seen 1/2" in steps[0].decision.reason and steps[0].volume_ratio > 1.5
    switch = steps[1].decision
    table = runtime.router.table
    assert table.version == 2 and len(table.handles) == 4
    assert [h.replica for h in table.handles] == list(switch.transition.target)
    kept = {cur: new for cur, new in switch.transition.kept}
    assert len(kept) == 2
    for cur, new in kept.items():  # kept replicas: the same handle (the same engine), same GPUs
        assert table.handles[new] is before[cur]
        assert table.handles[new].replica.gpus == before[cur].replica.gpus
    assert runtime.controller.last_switch_s == 20.0
    assert runtime.controller.history[-1].reason == switch.reason
    # right after a switch the plan matches what is measured: the gate is closed again
    assert steps[2].decision.reason == "within hysteresis band"


def test_a_failing_policy_keeps_the_current_plan_and_logs_the_traceback(half_cluster, caplog):
    context, initial, capacity_rps = half_cluster

    def planner(types, current):
        raise RuntimeError("planner exploded")

    broken = SwitchContext(context.cluster, context.cost, TYPES, context.links, planner)

    async def main():
        runtime, clock = _runtime(broken, initial)
        await runtime.controller.start()
        await serve_typed(runtime, 0, 500)
        clock.advance(10.0)
        step = await runtime.controller.check_once()
        await runtime.stop()
        return step, runtime

    with caplog.at_level(logging.ERROR, logger="oserve.runtime.controller"):
        step, runtime = asyncio.run(main())
    assert step is None and runtime.router.table.version == 1
    (record,) = [r for r in caplog.records if "control step failed" in r.getMessage()]
    assert record.exc_info is not None and "planner exploded" in str(record.exc_info[1])


def test_a_switch_whose_new_replica_fails_to_start_keeps_the_old_plan(half_cluster, caplog):
    context, initial, capacity_rps = half_cluster

    class FailingNewReplicas(FakeFleet):
        def __call__(self, replica):
            engine = super().__call__(replica)
            if len(self.engines) > 2:  # the initial two start; every later one fails its start
                async def broken_start():
                    raise OSError("no GPU memory")
                engine.start = broken_start
            return engine

    async def main():
        runtime, clock = _runtime(context, initial, fleet=FailingNewReplicas())
        await runtime.controller.start()
        for k, r in enumerate(capacity_rps):
            await serve_typed(runtime, k, round(2.0 * r * 10.0))
        clock.advance(10.0)
        step = await runtime.controller.check_once()
        states = [h.state for h in runtime.router.table.handles]
        await runtime.stop()
        return step, runtime, states

    with caplog.at_level(logging.ERROR, logger="oserve.runtime.controller"):
        step, runtime, states = asyncio.run(main())
    assert step.decision.switch and runtime.router.table.version == 1
    assert states == [ReplicaState.ACTIVE, ReplicaState.ACTIVE] and runtime.controller.last_switch_s is None
    (record,) = [r for r in caplog.records if "switch failed" in r.getMessage()]
    assert isinstance(record.exc_info[1], EngineStartError)


def test_a_hold_re_weights_the_current_replicas(half_cluster):
    """Within capacity the policy holds; its plan for the measured mix re-weights the dispatch."""
    context, initial, capacity_rps = half_cluster

    async def main():
        runtime, clock = _runtime(context, initial)
        await runtime.controller.start()
        await serve_typed(runtime, 0, round(0.5 * capacity_rps[0] * 10.0))  # only short requests
        clock.advance(10.0)
        step = await runtime.controller.check_once()
        await runtime.stop()
        return step, runtime

    step, runtime = asyncio.run(main())
    table = runtime.router.table
    assert not step.decision.switch and table.version == 1
    assert table.plan is step.decision.plan and table.plan.type_rates_rps[1] == 0.0


# ---- health and restarts ---------------------------------------------------------------------------

def test_health_checks_retire_a_silently_dead_replica():
    async def main():
        runtime, fleet = make_runtime(num_replicas=2)
        await runtime.controller.start()
        fleet.engines[0].kill()
        dead = await runtime.controller.check_health()
        states = [h.state for h in runtime.router.table.handles]
        await runtime.stop()
        return dead, states, runtime

    dead, states, runtime = asyncio.run(main())
    assert dead == ["r0"] and states == [ReplicaState.DEAD, ReplicaState.ACTIVE]
    assert runtime.metrics.counter("oserve_replica_deaths_total", replica="r0") == 1


def test_a_retired_replica_that_answers_again_is_reinstated():
    async def main():
        runtime, fleet = make_runtime(num_replicas=2)
        await runtime.controller.start()
        runtime.router.mark_dead(runtime.router.table.handles[1])  # e.g. one failed connection
        retired = await runtime.controller.check_health()
        await runtime.controller.restart_dead()
        handle = runtime.router.table.handles[1]
        state = handle.state
        await runtime.stop()
        return retired, handle, state, fleet

    retired, handle, state, fleet = asyncio.run(main())
    assert retired == [] and state is ReplicaState.ACTIVE
    assert handle.engine is fleet.engines[1] and len(fleet.engines) == 2  # reinstated, not restarted


def test_a_dead_replica_is_restarted():
    async def main():
        clock = ManualClock()
        runtime, fleet = make_runtime(num_replicas=2, clock=clock)
        await runtime.controller.start()
        fleet.engines[0].kill()
        await runtime.controller.check_once()
        table = runtime.router.table
        state = table.handles[0].state
        text = "".join([c.text async for c in await runtime.router.open(
            GenerationRequest("q", 2, prompt="x"), 0)])
        await runtime.stop()
        return runtime, fleet, table, state, text

    runtime, fleet, table, state, text = asyncio.run(main())
    assert len(fleet.engines) == 3 and fleet.engines[0].is_started is False  # the dead one was stopped
    assert table.handles[0].engine is fleet.engines[2] and state is ReplicaState.ACTIVE
    assert table.version == 1 and text == " ok" * 2
    assert runtime.metrics.counter("oserve_replica_restarts_total", replica="r0", outcome="ok") == 1


def test_failed_restarts_back_off_and_a_crash_loop_is_not_a_restart_storm():
    class FlakyFleet(FakeFleet):
        failures = 2

        def __call__(self, replica):
            engine = super().__call__(replica)
            if len(self.engines) > 2 and FlakyFleet.failures > 0:
                FlakyFleet.failures -= 1

                async def broken_start():
                    raise OSError("port in use")
                engine.start = broken_start
            return engine

    async def main():
        clock = ManualClock()
        runtime = ServingRuntime(MODEL, make_plan(2), FlakyFleet(clock=clock), None, None,
                                 RuntimeConfig(restart_backoff_s=2.0, restart_backoff_max_s=8.0), clock)
        controller = runtime.controller
        await controller.start()
        runtime.router.table.handles[0].engine.kill()
        attempts = []
        for _ in range(8):  # a check each second
            await controller.check_once()
            attempts.append((clock.now_s(), runtime.router.table.handles[0].state.value))
            clock.advance(1.0)
        # it now dies again 1 s after its restart: the next restart waits out the doubled back-off
        runtime.router.table.handles[0].engine.kill()
        later = []
        for _ in range(10):
            await controller.check_once()
            later.append(runtime.router.table.handles[0].state.value)
            clock.advance(1.0)
        await runtime.stop()
        return runtime, attempts, later

    runtime, attempts, later = asyncio.run(main())
    # t=0 fails (next try +2 s), t=2 fails (+4 s), t=6 succeeds
    assert [s for _, s in attempts] == ["dead"] * 6 + ["active"] * 2
    assert runtime.metrics.counter("oserve_replica_restarts_total", outcome="failed") == 2
    # attempt 4 comes 8 s (the cap) after attempt 3, not at once: t=8 dead ... t=14 restarted
    assert later == ["dead"] * 6 + ["active"] * 4


def test_the_control_loop_restarts_a_replica_as_soon_as_it_dies():
    """A death seen by the router wakes the loop at once: no wait for the next check interval."""
    async def main():
        clock = ManualClock()
        runtime, fleet = make_runtime(num_replicas=2, clock=clock,
                                      config=RuntimeConfig(check_interval_s=10.0))
        await runtime.start()
        fleet.engines[0].kill()
        runtime.router.mark_dead(runtime.router.table.handles[0])  # what a failed request does
        await settle()
        states = [h.state for h in runtime.router.table.handles]
        await runtime.stop()
        return clock, fleet, states

    clock, fleet, states = asyncio.run(main())
    assert clock.now_s() == 0.0 and len(fleet.engines) == 3
    assert states == [ReplicaState.ACTIVE, ReplicaState.ACTIVE]


def test_reactive_and_cost_aware_serve_policies_share_the_decision():
    from oserve.runtime.serve_setup import control_policy

    cluster, cost = parse_cluster("1x8xH100"), CostModel(load_models().get("llama-2-13b"))
    gate = ReplanConfig(cooldown_s=77.0)
    reactive = control_policy(cluster, cost, TYPES, "reactive", gate)
    cost_aware = control_policy(cluster, cost, TYPES, "cost-aware", gate)
    assert reactive.gate == gate and reactive.params.min_gap_s == 77.0
    assert cost_aware.gate is None and cost_aware.params == SwitchParams(transfer_mode="reload",
                                                                         min_gap_s=77.0)
    # no cooldown given: each policy keeps its own default gap
    default_gap = control_policy(cluster, cost, TYPES, "cost-aware", ReplanConfig())
    assert default_gap.params == SwitchParams(transfer_mode="reload")
    assert control_policy(cluster, cost, TYPES, "reactive", ReplanConfig()).params.min_gap_s == 120.0
    assert reactive.params.transfer_mode == "reload"  # the server's engines load weights from storage
    assert reactive.context.type_template == cost_aware.context.type_template == TYPES


def test_a_replica_started_after_the_drain_that_fails_is_restarted():
    class FailsOnce(FakeFleet):
        def __call__(self, replica):
            engine = super().__call__(replica)
            if len(self.engines) == 3:  # the new TP2 replica's first engine
                async def broken_start():
                    raise OSError("GPU still busy")
                engine.start = broken_start
            return engine

    async def main():
        clock = ManualClock()
        runtime = ServingRuntime(MODEL, make_plan(2), FailsOnce(clock=clock), None, None,
                                 RuntimeConfig(), clock)
        await runtime.controller.start()
        new_plan = static_plan(MODEL, [ReplicaConfig("cpu"), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                               [[1.0, 0.0], [0.0, 1.0]], (1.0, 1.0))
        table = await runtime.controller.apply(new_plan, "test switch")
        after_switch = [h.state for h in table.handles]
        await runtime.controller.check_once()
        after_check = [h.state for h in runtime.router.table.handles]
        await runtime.stop()
        return table, after_switch, after_check

    table, after_switch, after_check = asyncio.run(main())
    assert table.version == 2  # the old replica was already stopped: no way back, the switch stands
    assert after_switch == [ReplicaState.ACTIVE, ReplicaState.DEAD]
    assert after_check == [ReplicaState.ACTIVE, ReplicaState.ACTIVE]


def test_an_engine_factory_that_raises_on_restart_is_retried_and_the_loop_survives():
    class NoNodes(FakeFleet):
        def __call__(self, replica):
            if len(self.engines) >= 2:
                raise RuntimeError("no node has room for this replica")
            return super().__call__(replica)

    async def main():
        clock = ManualClock()
        runtime = ServingRuntime(MODEL, make_plan(2), NoNodes(clock=clock), None, None,
                                 RuntimeConfig(check_interval_s=1.0, restart_backoff_s=1.0), clock)
        await runtime.start()  # with the control loop
        runtime.router.table.handles[0].engine.kill()
        runtime.router.mark_dead(runtime.router.table.handles[0])
        await settle()
        for _ in range(3):  # the loop keeps checking (and retrying) on schedule
            clock.advance(1.0)
            await settle()
        failed = runtime.metrics.counter("oserve_replica_restarts_total", outcome="failed")
        alive = not runtime._control_task.done()
        await runtime.stop()
        return failed, alive

    failed, alive = asyncio.run(main())
    assert alive and failed >= 2


def test_checks_run_on_the_grid_of_the_interval_whatever_each_check_takes():
    """The simulator controls at every multiple of its interval; the server's checks do too: a check
    that takes 7 s of a 10 s interval does not push the next ones later (they ran at 10, 27, 44 before),
    and one that overruns skips the grid points it covered."""
    async def main():
        clock = ManualClock()
        runtime, _ = make_runtime(num_replicas=1, clock=clock, config=RuntimeConfig(check_interval_s=10.0))
        times, durations = [], iter([7.0, 7.0, 13.0, 1.0])

        async def slow_check():
            times.append(clock.now_s())
            await clock.sleep(next(durations, 0.0))

        runtime.controller.check_once = slow_check
        await runtime.start()
        await run_clock(clock, lambda: len(times) >= 5, step_s=0.5)
        await runtime.stop()
        return times

    assert asyncio.run(main()) == [10.0, 20.0, 30.0, 50.0, 60.0]


def test_a_switch_sends_a_stopping_replicas_requests_without_a_first_token_back_to_the_router():
    """The simulator re-routes a stopping replica's queue at once; the server did not (the queue waited
    on the draining replica, up to its drain timeout). Now the requests that have no token yet are
    dispatched again, only the one generating finishes where it is, and none is lost."""
    async def main():
        clock = ManualClock()
        fleet = FakeFleet(FakeCost(decode_s_per_token=0.01), max_num_seqs=1, clock=clock)
        runtime = ServingRuntime(MODEL, make_plan(2, [[0.0, 1.0], [0.0, 1.0]]), fleet,
                                 lambda n: int(n >= 100), config=RuntimeConfig(), clock=clock)
        new_plan = static_plan(MODEL, [ReplicaConfig("cpu"), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                               [[0.5, 0.5], [0.5, 0.5]], (1.0, 1.0))
        await runtime.controller.start()
        old = runtime.router.table.handles[1]
        tasks = [asyncio.create_task(serve_one(runtime, i)) for i in range(6)]
        await settle()
        queued = old.engine.load().num_waiting  # one runs on replica 1, five wait there
        switch = asyncio.create_task(runtime.controller.apply(new_plan, "test switch"))
        await run_clock(clock, lambda: switch.done() and all(t.done() for t in tasks))
        await runtime.stop()
        return runtime, old, queued, [t.result() for t in tasks]

    runtime, old, queued, results = asyncio.run(main())
    assert queued == 5 and all(r == " ok" * 10 for r in results)
    assert old.num_served == 1 and old.state is ReplicaState.STOPPED
    assert runtime.metrics.counter("oserve_rerouted_total") == 5
    assert runtime.metrics.counter("oserve_requests_total", status="ok") == 6


class TimedFleet(FakeFleet):
    """Fake engines whose starts and stops are logged with the clock's time (``events``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[float, str, str]] = []

    def __call__(self, replica):
        engine = super().__call__(replica)
        start, stop = engine.start, engine.stop

        async def timed_start():
            self.events.append((self.clock.now_s(), "start", engine.info.name))
            await start()

        async def timed_stop():
            self.events.append((self.clock.now_s(), "stop", engine.info.name))
            await stop()

        engine.start, engine.stop = timed_start, timed_stop
        return engine


def test_a_successor_on_a_stopping_replicas_gpus_starts_after_a_bounded_drain_and_hand_over():
    """The switch schedule the policy prices and the simulator executes (``switching.switch_schedule``):
    a replica placed on a stopping replica's device starts once that replica has stopped, and that is
    at the drain budget, not when its longest generation ends: generations that finish within the budget
    (at the simulator's 30 ms TPOT) finish in place, longer ones are handed over at once, the rest at the
    deadline, each continued on the kept replica; every request is answered in full, once."""
    async def main():
        clock = ManualClock()
        fleet = TimedFleet(FakeCost(decode_s_per_token=0.05), clock=clock)
        runtime = ServingRuntime(MODEL, make_plan(2, [[0.0, 1.0], [0.0, 1.0]]), fleet, None,
                                 config=RuntimeConfig(), clock=clock)
        new_plan = static_plan(MODEL, [ReplicaConfig("cpu"), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                               [[1.0, 0.0], [1.0, 0.0]], (1.0, 1.0))
        await runtime.controller.start()
        old = runtime.router.table.handles[1]
        sizes = [10, 10, 20, 20, 100, 100]  # 0.45 s (in place), 0.95 s (at the deadline), 4.95 s (at once)
        tasks = [asyncio.create_task(_serve_n(runtime, i, n)) for i, n in enumerate(sizes)]
        await run_clock(clock, lambda: all(s.num_tokens >= 1 for s in old.streams) and len(old.streams) == 6)
        t0 = clock.now_s()
        transition = transition_to(runtime.router.table.plan.replicas, new_plan.replicas)
        switch = asyncio.create_task(runtime.controller.execute(transition, new_plan, "test", t0,
                                                                drain_s=0.6))
        await run_clock(clock, lambda: switch.done() and all(t.done() for t in tasks))
        await runtime.stop()
        return runtime, fleet, old, t0, [t.result() for t in tasks], sizes

    runtime, fleet, old, t0, results, sizes = asyncio.run(main())
    assert results == [" ok" * n for n in sizes]
    assert old.num_served == 2 and old.state is ReplicaState.STOPPED  # the two short ones, in place
    assert runtime.metrics.counter("oserve_handed_over_total", replica="r1") == 4
    assert runtime.metrics.counter("oserve_requests_total", status="ok") == 6
    assert sum(e.num_served for e in fleet.engines) == 6 and fleet.engines[1].num_cancelled == 4
    (stop_s,) = [t for t, what, name in fleet.events if what == "stop" and name == "fake-r1-1"]
    (start_s,) = [t for t, what, name in fleet.events if what == "start" and name == "fake-r1-2"]
    assert t0 + 0.6 <= stop_s < t0 + 0.7  # the drain budget, not the 4.95 s of the longest generation
    assert start_s >= stop_s  # the successor loads only once the GPUs are free


async def _serve_n(runtime: ServingRuntime, i: int, max_tokens: int) -> str:
    stream = await runtime.router.open(GenerationRequest(f"n{i}", max_tokens, prompt="x" * 8), 0)
    try:
        return "".join([c.text async for c in stream])
    finally:
        await stream.aclose()
