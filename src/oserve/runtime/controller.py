"""The controller: measures per-type rates, runs the shared control step, executes transitions, and
restarts dead replicas.

Each check (every ``check_interval_s``) it health-checks the replicas, restarts dead ones, and, when a
control policy is set, runs ``oserve.switching.control.control_step`` on the rates measured over the
last window (``oserve.workload.RateWindow``), the same step the simulator's adaptive loop runs. A
switch executes the policy's ``Transition`` (from ``switching.transition.plan_transition``) on the
timeline of ``switching.switch_schedule``, the one the policy prices and the simulator executes: kept
replicas keep running untouched. When no started replica needs a stopped one's GPUs, the started ones
are built, started and health-checked before the routing table switches to the new plan, and the
stopped ones take nothing new, finish what they hold (up to ``drain_timeout_s``) and only then stop.
When a started replica takes a stopped one's GPUs, the table switches at the decision (the stopped
replicas take nothing new, the started ones are ``starting``), the replicas on free GPUs start at once,
and each stopped replica whose GPUs are taken drains for the policy's drain budget: generations that
finish within it finish in place, the others are handed over at once and the rest at the deadline
(``RoutedStream.hand_over``: continued on another replica by recompute; engines without
``supports_continuation`` drain in full); once it has stopped, its successors start. No KV is migrated.
A hold re-weights the dispatch of the current replicas when the policy says so. Each plan applied is
logged and kept in ``history``.

A replica found dead (failed health check, or an engine error seen by the router) is restarted: its
engine is stopped, a new one is built by the engine factory for the same replica and started; a failed
attempt is retried after a back-off that doubles up to ``restart_backoff_max_s``; a replica that dies
again within ``restart_backoff_max_s`` of its restart keeps its back-off (no restart storm).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from oserve.planner.plan import Plan, Replica
from oserve.runtime.clock import Clock
from oserve.runtime.engine import Engine
from oserve.runtime.errors import EngineStartError
from oserve.runtime.replica import ReplicaHandle, ReplicaState
from oserve.runtime.router import Router, RoutingTable
from oserve.switching.control import ControlPolicy, ControlStep, control_step
from oserve.switching.kv_migration import KvMigrationParams
from oserve.switching.switch_schedule import finishes_in_drain, gpu_successors
from oserve.switching.transition import Transition, transition_to
from oserve.workload.rate_window import RateWindow

EngineFactory = Callable[[Replica], Engine]

log = logging.getLogger("oserve.runtime.controller")


@dataclass(frozen=True)
class PlanRecord:
    version: int
    applied_at_s: float  # when the routing table switched to it
    reason: str
    plan: dict
    decided_at_s: float | None = None  # the check that chose it (None: applied by hand or at start)


@dataclass
class _Backoff:
    """Restart bookkeeping of one replica (by place: GPUs and configuration)."""

    attempts: int = 0                 # restarts since the replica last stayed up a full back-off cap
    next_try_s: float = float("-inf")
    up_since_s: float | None = None   # when the last restart succeeded
    engine_stopped: bool = False      # the dead engine was stopped (once)


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0       # wait after the first failed or short-lived restart
    backoff_max_s: float = 60.0  # cap of the doubling; also how long a restart must live to reset it


class Controller:
    def __init__(self, router: Router, engine_factory: EngineFactory,
                 policy: ControlPolicy | None = None, clock: Clock | None = None,
                 window_s: float = 60.0, check_interval_s: float = 10.0, drain_timeout_s: float = 300.0,
                 max_inflight_per_replica: int = 64, restart: RestartPolicy = RestartPolicy(),
                 handover_tpot_s: float = KvMigrationParams.tpot_s) -> None:
        self.router = router
        self.engine_factory = engine_factory
        self.policy = policy
        self.clock = clock or router.clock
        self.check_interval_s = check_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.handover_tpot_s = handover_tpot_s  # the simulator's rule of who finishes within the drain
        self.max_inflight_per_replica = max_inflight_per_replica
        self.restart = restart
        self.rates = RateWindow(len(router.table.plan.type_names), window_s)
        self.last_switch_s: float | None = None
        self.num_drifted_checks = 0
        self.last_step: ControlStep | None = None
        self.history: list[PlanRecord] = []
        self._backoff: dict[tuple, _Backoff] = {}
        self._switch_lock = asyncio.Lock()
        self._tails: set[asyncio.Task] = set()  # switches draining and starting after their table switch
        self._stopping = asyncio.Event()
        self._death = asyncio.Event()
        router.arrival_listeners.append(self.rates.record)
        router.death_listeners.append(lambda handle: self._death.set())

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
            raise EngineStartError(f"{len(errors)} of {len(handles)} replicas failed to start: "
                                   f"{errors[0]!r}") from errors[0]

    def _new_handle(self, replica: Replica) -> ReplicaHandle:
        return ReplicaHandle(replica, self.engine_factory(replica), self.max_inflight_per_replica)

    # ---- executing transitions -------------------------------------------------------------------

    async def apply(self, plan: Plan, reason: str) -> RoutingTable:
        """Switch to an already placed ``plan``: replicas on the same GPUs with the same configuration
        stay (``switching.transition.transition_to``), the others start or stop."""
        return await self.execute(transition_to(self.router.table.plan.replicas, plan.replicas), plan,
                                  reason)

    async def execute(self, transition: Transition, plan: Plan, reason: str,
                      decided_at_s: float | None = None,
                      switched: asyncio.Event | None = None,
                      drain_s: float | None = None) -> RoutingTable:
        """Execute ``transition`` (current replicas -> ``plan.replicas``, which are its target).

        Without a started replica on GPUs that a stopped replica holds, started replicas start first
        (make before break): if one fails, the switch is abandoned and the current plan keeps serving.
        Then the routing table switches to the new plan and the stopped replicas drain and stop.
        A started replica placed on GPUs that a stopped replica holds can only start after it has
        stopped (break before make): with ``drain_s`` (the policy's drain budget; the control loop
        gives it) the table switches at once, the started replicas on free GPUs start, each stopped
        replica whose GPUs are taken drains for at most ``drain_s`` and hands over what it still runs
        (``switching.switch_schedule``), and its successors start once it has stopped; without it the
        free-GPU replicas start first and the stopped ones drain in full. Started replicas sit in the
        new table as ``starting`` (the router spills their share to the replicas that take work); one
        that fails to start after the table switched is marked dead and restarted with back-off.
        ``switched`` (if given) is set once the routing table is the new plan's.
        """
        if tuple(plan.replicas) != tuple(transition.target):
            raise ValueError("the plan's replicas are not the transition's target")
        async with self._switch_lock:
            old = self.router.table
            by_id = {h.replica.replica_id: h for h in old.handles}
            source_of = {new: cur for cur, new in transition.kept}
            handles, fresh, dead_kept = [], [], []
            for replica in plan.replicas:
                handle = by_id.get(source_of.get(replica.replica_id, -1))
                if handle is not None and handle.state is ReplicaState.ACTIVE:
                    handle.replica = replica
                else:
                    if handle is not None:  # kept but dead: its engine goes before a new one starts
                        dead_kept.append(handle)
                    handle = self._new_handle(replica)
                    fresh.append(handle)
                handles.append(handle)
            kept = {id(h) for h in handles}
            dropped = [h for h in old.handles if id(h) not in kept and h not in dead_kept]
            # started replicas on GPUs that stopped ones hold, and those (the schedule's shared rule)
            waits_for = gpu_successors(transition)
            after = [h for h in fresh if waits_for.get(h.replica.replica_id)]
            reused = {old_id for olds in waits_for.values() for old_id in olds}
            await asyncio.gather(*(self._stop_handle(h) for h in dead_kept), return_exceptions=True)
            bounded = drain_s is not None and bool(after)
            early: asyncio.Task | None = None
            if bounded:
                early = asyncio.create_task(self._start_after_switch([h for h in fresh if h not in after]))
            else:
                await self._start_handles([h for h in fresh if h not in after])
            table = RoutingTable(old.version + 1, plan, tuple(handles))
            self.router.set_table(table)
            self._record(table, reason, decided_at_s)
            if switched is not None:
                switched.set()
            for handle in dropped:
                if handle.state is ReplicaState.ACTIVE:
                    handle.start_draining()
            await asyncio.gather(*(self._drain_and_stop(
                h, drain_s if bounded and h.replica.replica_id in reused else None) for h in dropped))
            if after:
                await self._start_after_switch(after)
            if early is not None:
                await early
            return table

    async def _start_after_switch(self, handles: list[ReplicaHandle]) -> None:
        """Start replicas already in the routing table; a failure marks them dead (restarted later)."""
        if not handles:
            return
        log.info("starting %s", [h.name for h in handles])
        started_s = self.clock.now_s()
        try:
            await self._start_handles(handles)
            log.info("%s started in %.1f s", [h.name for h in handles], self.clock.now_s() - started_s)
        except EngineStartError:
            log.exception("replicas started after the table switch failed; they are restarted with "
                          "back-off")
            for handle in handles:
                self.router.mark_dead(handle)

    def _hand_over(self, handle: ReplicaHandle, budget_s: float, everything: bool) -> int:
        """Hand a stopping replica's generations over to other replicas: those that would not finish
        within the drain (``finishes_in_drain`` at the simulator's TPOT), or all of them."""
        moving = [s for s in list(handle.streams)
                  if everything or not finishes_in_drain(s.remaining_tokens, self.handover_tpot_s,
                                                         budget_s)]
        for stream in moving:
            stream.hand_over()
        return len(moving)

    async def _drain_and_stop(self, handle: ReplicaHandle, budget_s: float | None = None) -> None:
        """Drain, then stop. With ``budget_s`` (a successor waits for the GPUs) the generations that
        would not finish within it are handed over at once, the rest at its end; requests that cannot
        be handed over (engines without continuation) are waited for up to ``drain_timeout_s``."""
        # logged with their times: on a CPU replica the successor's cold start waits for these
        log.info("replica %s drains %d requests, then stops", handle.name, handle.num_inflight)
        begin_s = self.clock.now_s()
        if budget_s is not None:
            moved = self._hand_over(handle, budget_s, everything=False)
            while handle.num_inflight > 0 and self.clock.now_s() < begin_s + budget_s:
                await self.clock.sleep(0.02)
            moved += self._hand_over(handle, budget_s, everything=True)
            log.info("replica %s handed %d generations over", handle.name, moved)
        deadline_s = begin_s + self.drain_timeout_s
        while handle.num_inflight > 0 and self.clock.now_s() < deadline_s:
            await self.clock.sleep(0.02)
        if handle.num_inflight > 0:
            log.warning("replica %s still had %d requests after draining %.0f s; stopping it",
                        handle.name, handle.num_inflight, self.drain_timeout_s)
        drained_s = self.clock.now_s()
        await self._stop_handle(handle)
        log.info("replica %s drained in %.1f s, stopped in %.1f s", handle.name, drained_s - begin_s,
                 self.clock.now_s() - drained_s)

    async def _stop_handle(self, handle: ReplicaHandle) -> None:
        try:
            await handle.engine.stop()
        finally:
            if handle.state is not ReplicaState.DEAD:
                handle.state = ReplicaState.STOPPED

    def _record(self, table: RoutingTable, reason: str, decided_at_s: float | None = None) -> None:
        record = PlanRecord(table.version, self.clock.now_s(), reason, table.plan.to_dict(), decided_at_s)
        self.history.append(record)
        log.info("plan v%d (%s): %s; dispatch %s", table.version, reason, table.plan.describe(),
                 [[round(x, 3) for x in row] for row in table.plan.dispatch])

    def _redispatch(self, plan: Plan) -> None:
        """Same replicas, the dispatch (and rates) the policy planned for the measured mix: the table
        keeps its version and its handles."""
        table = self.router.table
        if tuple(plan.replicas) == tuple(table.plan.replicas):
            self.router.set_table(RoutingTable(table.version, plan, table.handles))

    # ---- health and restarts ---------------------------------------------------------------------

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
                log.error("replica %s failed its health check (%r); no new requests go to it",
                          handle.name, ok)
            elif ok is True and handle.state is ReplicaState.DEAD:
                handle.state = ReplicaState.ACTIVE
                log.warning("replica %s is healthy again; it takes requests again", handle.name)
        return retired

    async def restart_dead(self) -> list[str]:
        """Restart each dead replica of the current table that fails its health check and whose back-off
        has passed; returns the names of those restarted. (A dead replica that answers its health check
        is left to ``check_health``, which reinstates it at the next check.)"""
        if not any(h.state is ReplicaState.DEAD for h in self.router.table.handles):
            return []  # nothing to restart: do not wait for a switch's drain to end
        async with self._switch_lock:
            restarted = []
            for handle in [h for h in self.router.table.handles if h.state is ReplicaState.DEAD]:
                try:
                    healthy = await handle.engine.health()
                except Exception:  # noqa: BLE001 - a health check that raises is a failed one
                    healthy = False
                if healthy is not True and await self._restart(handle):
                    restarted.append(handle.name)
            return restarted

    async def _restart(self, handle: ReplicaHandle) -> bool:
        now_s = self.clock.now_s()
        backoff = self._backoff.setdefault(handle.key(), _Backoff())
        if backoff.up_since_s is not None:  # it had been restarted and has died again
            if now_s - backoff.up_since_s >= self.restart.backoff_max_s:
                backoff.attempts, backoff.next_try_s = 0, float("-inf")
            backoff.up_since_s = None
        if now_s < backoff.next_try_s:
            return False
        backoff.attempts += 1
        backoff.next_try_s = now_s + min(self.restart.backoff_max_s,
                                         self.restart.backoff_s * 2 ** (backoff.attempts - 1))
        labels = (("replica", handle.name),)
        if not backoff.engine_stopped:
            backoff.engine_stopped = True
            try:  # release what the dead engine holds (its process, actor or GPU memory) first
                await handle.engine.stop()
            except Exception:  # noqa: BLE001 - a dead engine may fail to stop; the restart goes on
                log.exception("stopping dead replica %s failed", handle.name)
        try:
            fresh = self._new_handle(handle.replica)  # the factory itself may fail (e.g. no Ray node)
            await self._start_handles([fresh])
        except Exception:  # noqa: BLE001 - retried after the back-off
            self.router.metrics.inc("oserve_replica_restarts_total", labels + (("outcome", "failed"),))
            log.exception("restart %d of replica %s failed; next try in %.0f s", backoff.attempts,
                          handle.name, backoff.next_try_s - now_s)
            return False
        table = self.router.table
        self.router.set_table(RoutingTable(table.version, table.plan,
                                           tuple(fresh if h is handle else h for h in table.handles)))
        backoff.up_since_s, backoff.engine_stopped = now_s, False
        self.router.metrics.inc("oserve_replica_restarts_total", labels + (("outcome", "ok"),))
        log.warning("replica %s restarted (attempt %d)", handle.name, backoff.attempts)
        return True

    # ---- the control loop ------------------------------------------------------------------------

    def measured_rps(self, now_s: float) -> tuple[float, ...]:
        """Per-type rates over the last window; zeros until one full window of traffic was seen."""
        rates = self.rates.rates_rps(now_s)
        if self.rates.observed_s(now_s) < self.rates.window_s:
            return tuple(0.0 for _ in rates)
        return rates

    async def check_once(self) -> ControlStep | None:
        """Check health, restart dead replicas, then run the control step and act on it."""
        await self.check_health()
        await self.restart_dead()
        if self.policy is None:
            return None
        now_s = self.clock.now_s()
        measured = self.measured_rps(now_s)
        plan = self.table.plan
        try:
            step = await asyncio.to_thread(control_step, self.policy, plan.replicas, plan.type_rates_rps,
                                           measured, self.last_switch_s, now_s, self.num_drifted_checks)
        except Exception:  # noqa: BLE001 - a failing policy keeps the current plan serving
            log.exception("control step failed, keeping plan v%d", self.table.version)
            return None
        self.num_drifted_checks = step.num_drifted_checks
        self.last_step = step
        decision = step.decision
        if decision.switch and decision.transition is not None and decision.plan is not None:
            try:
                await self._switch(decision.transition, decision.plan, decision.reason, now_s)
                self.last_switch_s = now_s
            except Exception:  # noqa: BLE001 - e.g. a new replica failed to start
                log.exception("switch failed, keeping plan v%d", self.table.version)
        elif decision.plan is not None and self.policy.redispatch:
            self._redispatch(decision.plan)
        return step

    def next_check_s(self, now_s: float) -> float:
        """The first check time after ``now_s``: checks run at the multiples of ``check_interval_s`` on
        the controller's clock, as the simulator's control events run at the multiples of its interval,
        so the cadence does not drift by the time each check takes (a check or a switch that overruns
        skips the grid points it covered)."""
        return (math.floor(now_s / self.check_interval_s + 1e-9) + 1) * self.check_interval_s

    async def _switch(self, transition: Transition, plan: Plan, reason: str, now_s: float) -> None:
        """Execute a switch up to the moment the routing table is the new plan's; its tail (draining the
        stopped replicas, then starting those placed on their GPUs) runs on in the background, so that
        the checks keep their cadence as the simulator's control events do once its new replicas have
        joined (a further switch waits for the tail: it needs the switch lock)."""
        switched = asyncio.Event()
        drain_s = self.policy.params.drain_s if self.policy is not None else None
        task = asyncio.create_task(self.execute(transition, plan, reason, now_s, switched, drain_s))
        waiter = asyncio.ensure_future(switched.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()  # raises when the switch failed before the table switched
            return
        self._tails.add(task)
        task.add_done_callback(self._tail_done)

    def _tail_done(self, task: asyncio.Task) -> None:
        self._tails.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("the tail of a switch failed", exc_info=task.exception())

    async def run(self) -> None:
        """Check at every multiple of ``check_interval_s`` (``next_check_s``); a replica death wakes it
        early, for the restart only (the control step keeps its cadence, so the drift gate counts
        checks, not deaths; a replica marked dead that still answers its health check is reinstated at
        the next regular check, not at once, so that one that fails requests but answers health checks
        does not flap)."""
        next_s = self.next_check_s(self.clock.now_s())
        while not self._stopping.is_set():
            timer = asyncio.ensure_future(self.clock.sleep(next_s - self.clock.now_s()))
            death = asyncio.ensure_future(self._death.wait())
            await asyncio.wait({timer, death}, return_when=asyncio.FIRST_COMPLETED)
            for task in (timer, death):
                task.cancel()
            await asyncio.gather(timer, death, return_exceptions=True)
            if self._stopping.is_set():
                break
            self._death.clear()
            is_check = timer.done() and not timer.cancelled()
            try:
                if is_check:
                    await self.check_once()
                else:
                    await self.restart_dead()
            except Exception:  # noqa: BLE001 - the loop outlives any one failed check
                log.exception("controller check failed; the next one runs as scheduled")
            if is_check:  # the next grid point after this one and after the check's end
                next_s = self.next_check_s(max(next_s, self.clock.now_s()))

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._tails):  # a switch's drain in progress: the engines stop below anyway
            task.cancel()
        await asyncio.gather(*self._tails, return_exceptions=True)
        async with self._switch_lock:
            for handle in self.router.table.handles:
                if handle.state is ReplicaState.ACTIVE:
                    handle.state = ReplicaState.DRAINING
            await asyncio.gather(*(self._stop_handle(h) for h in self.router.table.handles),
                                 return_exceptions=True)


__all__ = ["Controller", "EngineFactory", "PlanRecord", "RestartPolicy"]
