"""The controller: measures per-type rates, decides when to re-plan, and applies plans live.

Applying a plan never drops a request: replicas that both plans share keep running; new replicas start
and pass a health check before the routing table switches to the new plan; replicas the new plan drops
are drained (they take nothing new and finish what they hold, up to ``drain_timeout_s``) and only then
stopped. Each plan applied is logged and kept in ``history`` for the admin endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from oserve.planner.plan import Plan, Replica
from oserve.runtime.clock import Clock
from oserve.runtime.engine import Engine
from oserve.runtime.errors import EngineStartError
from oserve.runtime.rate_meter import RateMeter
from oserve.runtime.replan_policy import ReplanConfig, ReplanDecision, ReplanState, decide, drift
from oserve.runtime.replica import ReplicaHandle, ReplicaState
from oserve.runtime.router import Router, RoutingTable

EngineFactory = Callable[[Replica], Engine]
Planner = Callable[[Sequence[float]], Plan]  # measured per-type rates (req/s) -> a new plan

log = logging.getLogger("oserve.runtime.controller")


@dataclass(frozen=True)
class PlanRecord:
    version: int
    applied_at_s: float
    reason: str
    plan: dict


class Controller:
    def __init__(self, router: Router, engine_factory: EngineFactory, planner: Planner | None = None,
                 clock: Clock | None = None, replan: ReplanConfig = ReplanConfig(),
                 window_s: float = 60.0, check_interval_s: float = 10.0, drain_timeout_s: float = 300.0,
                 max_inflight_per_replica: int = 64, switcher=None) -> None:
        self.router = router
        self.engine_factory = engine_factory
        self.planner = planner
        self.switcher = switcher  # a SwitchOutcome-returning policy that replaces decide + planner
        self.last_switch_s: float | None = None
        self.clock = clock or router.clock
        self.replan = replan
        self.check_interval_s = check_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.max_inflight_per_replica = max_inflight_per_replica
        self.meter = RateMeter(len(router.table.plan.type_names), window_s)
        self.replan_state = ReplanState()
        self.history: list[PlanRecord] = []
        self.last_decision: ReplanDecision | None = None
        self._switch_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        router.arrival_listeners.append(self.meter.record)

    @property
    def table(self) -> RoutingTable:
        return self.router.table

    async def start(self) -> None:
        """Start the engines of the router's initial table and make them active."""
        table = self.router.table
        await self._start_handles(list(table.handles))
        self._record(table, "initial plan")

    async def _start_handles(self, handles: list[ReplicaHandle]) -> None:
        async def start_one(handle: ReplicaHandle) -> None:
            await handle.engine.start()
            if not await handle.engine.health():
                raise EngineStartError(f"replica {handle.name} failed its health check after start")
            handle.state = ReplicaState.ACTIVE

        results = await asyncio.gather(*(start_one(h) for h in handles), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(self._stop_handle(h) for h in handles), return_exceptions=True)
            raise EngineStartError(f"{len(errors)} of {len(handles)} replicas failed to start: {errors[0]}")

    def _new_handle(self, replica: Replica) -> ReplicaHandle:
        return ReplicaHandle(replica, self.engine_factory(replica), self.max_inflight_per_replica)

    async def apply(self, plan: Plan, reason: str) -> RoutingTable:
        """Switch to ``plan``: start new replicas, switch routing, drain and stop the dropped ones."""
        async with self._switch_lock:
            old = self.router.table
            reusable = {h.key(): h for h in old.handles if h.state is ReplicaState.ACTIVE}
            handles, fresh = [], []
            for replica in plan.replicas:
                handle = reusable.pop((replica.gpus, replica.config), None)
                if handle is None:
                    handle = self._new_handle(replica)
                    fresh.append(handle)
                else:
                    handle.replica = replica
                handles.append(handle)
            await self._start_handles(fresh)
            table = RoutingTable(old.version + 1, plan, tuple(handles))
            self.router.set_table(table)
            self._record(table, reason)
            kept = {id(h) for h in handles}
            dropped = [h for h in old.handles if id(h) not in kept]
            for handle in dropped:
                if handle.state is ReplicaState.ACTIVE:
                    handle.state = ReplicaState.DRAINING
            await asyncio.gather(*(self._drain_and_stop(h) for h in dropped))
            return table

    async def _drain_and_stop(self, handle: ReplicaHandle) -> None:
        deadline_s = self.clock.now_s() + self.drain_timeout_s
        while handle.num_inflight > 0 and self.clock.now_s() < deadline_s:
            await self.clock.sleep(0.02)
        if handle.num_inflight > 0:
            log.warning("replica %s still had %d requests after draining %.0f s; stopping it",
                        handle.name, handle.num_inflight, self.drain_timeout_s)
        await self._stop_handle(handle)

    async def _stop_handle(self, handle: ReplicaHandle) -> None:
        try:
            await handle.engine.stop()
        finally:
            if handle.state is not ReplicaState.DEAD:
                handle.state = ReplicaState.STOPPED

    def _record(self, table: RoutingTable, reason: str) -> None:
        record = PlanRecord(table.version, self.clock.now_s(), reason, table.plan.to_dict())
        self.history.append(record)
        log.info("plan v%d (%s): %s; dispatch %s", table.version, reason, table.plan.describe(),
                 [[round(x, 3) for x in row] for row in table.plan.dispatch])

    async def check_health(self) -> list[str]:
        """Health-check the active and dead replicas: a failing active one is retired (marked dead), a
        dead one that answers again (e.g. a remote server back from a restart) is reinstated.
        Returns the names of the replicas retired."""
        handles = [h for h in self.router.table.handles
                   if h.state in (ReplicaState.ACTIVE, ReplicaState.DEAD)]
        results = await asyncio.gather(*(h.engine.health() for h in handles), return_exceptions=True)
        retired = []
        for handle, ok in zip(handles, results):
            if ok is not True and handle.state is ReplicaState.ACTIVE:
                self.router.mark_dead(handle)
                retired.append(handle.name)
                log.error("replica %s failed its health check; no new requests go to it", handle.name)
            elif ok is True and handle.state is ReplicaState.DEAD:
                handle.state = ReplicaState.ACTIVE
                log.warning("replica %s is healthy again; it takes requests again", handle.name)
        return retired

    async def check_once(self) -> ReplanDecision:
        """Check replica health, measure rates, decide, and re-plan if due. Returns the decision."""
        await self.check_health()
        now_s = self.clock.now_s()
        measured = self.meter.rates_rps(now_s)
        if self.meter.observed_s(now_s) < self.meter.window_s:
            measured = tuple(0.0 for _ in measured)  # no full window yet: nothing to act on
        planned = self.table.plan.type_rates_rps
        if self.switcher is not None:
            return await self._check_switcher(planned, measured, now_s)
        decision = decide(self.replan, self.replan_state, planned, measured, now_s)
        self.replan_state = decision.state
        self.last_decision = decision
        if decision.should_replan and self.planner is not None:
            try:
                plan = await asyncio.to_thread(self.planner, measured)
                await self.apply(plan, decision.reason)
                self.last_switch_s = now_s
            except Exception as exc:  # noqa: BLE001 - a failed re-plan keeps the current plan serving
                log.error("re-plan failed, keeping plan v%d: %s", self.table.version, exc)
        return decision

    async def _check_switcher(self, planned, measured, now_s: float) -> ReplanDecision:
        mix, ratio = drift(planned, measured)
        if sum(measured) < self.replan.min_total_rps:
            decision = ReplanDecision(False, self.replan_state, "too little traffic", mix, ratio)
        else:
            try:
                outcome = await asyncio.to_thread(self.switcher, self.table.plan, self.last_switch_s,
                                                  now_s, measured)
            except Exception as exc:  # noqa: BLE001 - a failing policy keeps the current plan
                log.error("switch policy failed, keeping plan v%d: %s", self.table.version, exc)
                outcome = None
            reason = outcome.reason if outcome is not None else "switch policy failed"
            decision = ReplanDecision(bool(outcome and outcome.switch), self.replan_state, reason, mix,
                                      ratio)
            if outcome is not None and outcome.switch and outcome.plan is not None:
                try:
                    await self.apply(outcome.plan, outcome.reason)
                    self.last_switch_s = now_s
                except Exception as exc:  # noqa: BLE001 - e.g. a new replica failed to start
                    log.error("switch failed, keeping plan v%d: %s", self.table.version, exc)
        self.last_decision = decision
        return decision

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self.clock.sleep(self.check_interval_s)
            if not self._stopping.is_set():
                await self.check_once()

    async def stop(self) -> None:
        self._stopping.set()
        async with self._switch_lock:
            for handle in self.router.table.handles:
                if handle.state is ReplicaState.ACTIVE:
                    handle.state = ReplicaState.DRAINING
            await asyncio.gather(*(self._stop_handle(h) for h in self.router.table.handles),
                                 return_exceptions=True)


def rescaled_types(base: Sequence, rates_rps: Sequence[float]) -> list:
    """The planner's TypeStats with the measured rates in place of the planned ones."""
    return [replace(stats, rate_rps=float(rate)) for stats, rate in zip(base, rates_rps)]


__all__ = ["Controller", "EngineFactory", "PlanRecord", "Planner", "rescaled_types"]
