"""Controller: live plan switches lose no request; re-planning follows measured rates with hysteresis."""

from __future__ import annotations

import asyncio

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.clock import ManualClock
from oserve.runtime.engine import GenerationRequest
from oserve.runtime.fake_engine import FakeCost
from oserve.runtime.replan_policy import ReplanConfig
from oserve.runtime.replica import ReplicaState
from oserve.runtime.serving import RuntimeConfig, ServingRuntime
from oserve.runtime.static_plan import static_plan

from .factories import MODEL, TYPE_NAMES, FakeFleet, make_plan, make_runtime


async def serve_one(runtime: ServingRuntime, i: int) -> str:
    req = GenerationRequest(f"r{i}", 10, prompt="x" * (8 if i % 2 else 800))
    stream = await runtime.router.open(req, runtime.router.classify(2 if i % 2 else 200))
    try:
        return "".join([c.text async for c in stream])
    finally:
        await stream.aclose()


def test_plan_switch_under_load_loses_no_request():
    async def main():
        runtime, fleet = make_runtime(num_replicas=2, cost=FakeCost(decode_s_per_token=0.002),
                                      config=RuntimeConfig(max_inflight_per_replica=512))
        new_plan = static_plan(MODEL, [ReplicaConfig("cpu"), ReplicaConfig("cpu", tp=2)], TYPE_NAMES,
                               [[1.0, 0.0], [0.0, 1.0]], (1.0, 1.0))
        async with runtime:
            old_handles = list(runtime.router.table.handles)
            tasks = [asyncio.create_task(serve_one(runtime, i)) for i in range(200)]
            await asyncio.sleep(0.005)  # requests are in flight on the old plan
            table = await runtime.controller.apply(new_plan, "test switch")
            tasks += [asyncio.create_task(serve_one(runtime, i)) for i in range(200, 300)]
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return runtime, fleet, old_handles, table, results

    runtime, fleet, old_handles, table, results = asyncio.run(main())
    assert all(r == " ok" * 10 for r in results), [r for r in results if r != " ok" * 10][:3]
    assert table.version == 2
    # replica 0 (cpu TP1 on GPU 0) is in both plans and kept; replica 1 was drained and stopped
    assert table.handles[0] is old_handles[0]
    assert old_handles[1].state is ReplicaState.STOPPED and old_handles[1].num_inflight == 0
    assert len(fleet.engines) == 3
    served = runtime.metrics.counter("oserve_requests_total", status="ok")
    assert served == 300 and runtime.metrics.counter("oserve_rejected_total") == 0
    assert [r.version for r in runtime.controller.history] == [1, 2]


def test_controller_replans_when_the_measured_mix_drifts():
    clock = ManualClock()
    planned_for: list[tuple[float, ...]] = []

    def planner(rates):
        planned_for.append(tuple(rates))
        return static_plan(MODEL, [ReplicaConfig("cpu")] * 3, TYPE_NAMES, type_rates_rps=rates)

    async def main():
        fleet = FakeFleet()
        config = RuntimeConfig(window_s=10.0, check_interval_s=1.0,
                               replan=ReplanConfig(confirm_checks=2, cooldown_s=0.0))
        runtime = ServingRuntime(MODEL, make_plan(2, rates=(1.0, 1.0)), fleet, lambda n: int(n >= 100),
                                 planner, config, clock)
        await runtime.controller.start()
        decisions = []
        for second in range(14):  # 4 short requests per second, no long ones: the mix moved
            for _ in range(4):
                await serve_one_typed(runtime, 0)
            clock.advance(1.0)
            if second >= 10:
                decisions.append(await runtime.controller.check_once())
        await runtime.stop()
        return runtime, decisions

    runtime, decisions = asyncio.run(main())
    assert [d.should_replan for d in decisions] == [False, True, False, False], decisions
    assert planned_for and planned_for[0] == (4.0, 0.0)
    assert runtime.router.table.version == 2 and len(runtime.router.table.handles) == 3
    assert "drift" in runtime.controller.history[-1].reason


async def serve_one_typed(runtime: ServingRuntime, type_index: int) -> None:
    stream = await runtime.router.open(GenerationRequest("q", 1, prompt="x"), type_index)
    async for _ in stream:
        pass


def test_failed_replan_keeps_the_current_plan():
    def planner(rates):
        raise RuntimeError("planner exploded")

    async def main():
        clock = ManualClock()
        config = RuntimeConfig(window_s=1.0, replan=ReplanConfig(confirm_checks=1, cooldown_s=0.0))
        runtime = ServingRuntime(MODEL, make_plan(2), FakeFleet(), None, planner, config, clock)
        await runtime.controller.start()
        for _ in range(10):
            await serve_one_typed(runtime, 0)
        clock.advance(1.0)
        decision = await runtime.controller.check_once()
        await runtime.stop()
        return decision, runtime

    decision, runtime = asyncio.run(main())
    assert decision.should_replan and runtime.router.table.version == 1


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
        state = runtime.router.table.handles[1].state
        await runtime.stop()
        return retired, state

    retired, state = asyncio.run(main())
    assert retired == [] and state is ReplicaState.ACTIVE


def test_a_switch_policy_replaces_the_reactive_rule():
    from oserve.runtime.switch_adapter import SwitchOutcome

    calls = []

    def switcher(plan, last_switch_s, now_s, rates):
        calls.append((last_switch_s, now_s, tuple(rates)))
        if last_switch_s is None:
            return SwitchOutcome(True, "gain 10 req > cost 1 req", make_plan(3, rates=rates))
        return SwitchOutcome(False, "minimum gap", None)

    async def main():
        clock = ManualClock()
        config = RuntimeConfig(window_s=1.0)
        runtime = ServingRuntime(MODEL, make_plan(2), FakeFleet(), None, None, config, clock,
                                 switcher=switcher)
        await runtime.controller.start()
        decisions = []
        for _ in range(2):
            for _ in range(5):
                await serve_one_typed(runtime, 1)
            clock.advance(1.0)
            decisions.append(await runtime.controller.check_once())
        await runtime.stop()
        return runtime, decisions

    runtime, decisions = asyncio.run(main())
    assert [d.should_replan for d in decisions] == [True, False]
    assert calls[0][0] is None and calls[1][0] == 1.0 and calls[0][2] == (0.0, 5.0)
    assert runtime.router.table.version == 2 and len(runtime.router.table.handles) == 3
    assert runtime.controller.history[-1].reason == "gain 10 req > cost 1 req"


def test_cost_aware_switcher_wraps_the_switching_policy(conv_trace, conv_types):
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.planner.api import make_plan as plan_for
    from oserve.runtime.switch_adapter import cost_aware_switcher

    stats = conv_types.stats(conv_trace)
    cluster, model = parse_cluster("1x8xH100"), load_models().get("llama-2-13b")
    cost = CostModel(model)
    plan = plan_for(cluster, model, stats, "oserve", cost)
    switcher = cost_aware_switcher(cluster, cost, stats)
    same = switcher(plan, None, 1000.0, [s.rate_rps for s in stats])
    assert not same.switch and same.plan is None and same.reason  # the planned rates: hold
    recent = switcher(plan, 990.0, 1000.0, [10 * s.rate_rps for s in stats])
    assert not recent.switch and "minimum gap" in recent.reason
