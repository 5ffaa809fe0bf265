"""A serving runtime: router + controller + metrics for one model, with an explicit lifecycle."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from oserve.common.validation import one_of
from oserve.guard.config import GuardConfig
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.planner.plan import Plan
from oserve.planner.spill_rule import PlanSpillRules, SpillRule
from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.controller import Controller, EngineFactory, RestartPolicy
from oserve.runtime.metrics import Metrics
from oserve.runtime.replica import ReplicaHandle, ReplicaState
from oserve.runtime.router import Classifier, Router, RoutingTable
from oserve.switching.control import ControlPolicy
from oserve.switching.replan_gate import ReplanConfig


class RuntimeConfig(BaseModel):
    """Limits and timings of the serving runtime (validated at start-up; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_inflight_per_replica: int = Field(64, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_attempts: int = Field(3, ge=1)
    # one of oserve.planner.dispatch_policy's policies
    dispatch_policy: Annotated[str, AfterValidator(one_of(DISPATCH_POLICIES))] = "least-outstanding"
    first_token_timeout_s: float = Field(600.0, gt=0, allow_inf_nan=False)  # includes engine queueing
    token_timeout_s: float = Field(120.0, gt=0, allow_inf_nan=False)
    seed: int = 0
    window_s: float = Field(60.0, gt=0, allow_inf_nan=False)
    check_interval_s: float = Field(10.0, ge=0, allow_inf_nan=False)  # 0: no control loop
    drain_timeout_s: float = Field(300.0, ge=0, allow_inf_nan=False)
    # in-flight requests get this long to finish when the server stops (then an explicit error)
    shutdown_grace_s: float = Field(10.0, ge=0, allow_inf_nan=False)
    body_read_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)  # then a 408
    api_key: str | None = Field(None, repr=False, min_length=1)  # if set, required on all but /health
    replan: ReplanConfig = Field(default_factory=ReplanConfig)  # the drift gate (--switch-policy reactive)
    guard: GuardConfig | None = None  # the system-prompt leakage guard (docs/guard.md); None: off
    # a dead replica is restarted; a failed restart is retried after a back-off doubling from
    # restart_backoff_s up to restart_backoff_max_s
    restart_backoff_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    restart_backoff_max_s: float = Field(60.0, gt=0, allow_inf_nan=False)



class ServingRuntime:
    """Everything behind the gateway. ``async with runtime:`` starts the engines and the controller."""

    def __init__(self, model_name: str, plan: Plan, engine_factory: EngineFactory,
                 classifier: Classifier | None = None, policy: ControlPolicy | None = None,
                 config: RuntimeConfig = RuntimeConfig(), clock: Clock | None = None,
                 spill_rule: SpillRule | PlanSpillRules | None = None) -> None:
        """``spill_rule`` (per-type SLOs, per-replica speeds of ``plan``; or ``PlanSpillRules``, which
        builds the rule of each plan the runtime switches to) is what the ``slo-spill`` dispatch
        policy needs."""
        self.model_name = model_name
        self.config = config
        self.clock = clock or WallClock()
        self.metrics = Metrics()
        handles = tuple(ReplicaHandle(r, engine_factory(r), config.max_inflight_per_replica)
                        for r in plan.replicas)
        self.router = Router(RoutingTable(1, plan, handles), self.metrics, classifier, self.clock,
                             config.max_attempts, config.dispatch_policy, config.seed,
                             config.first_token_timeout_s, config.token_timeout_s, spill_rule)
        self.controller = Controller(self.router, engine_factory, policy, self.clock, config.window_s,
                                     config.check_interval_s, config.drain_timeout_s,
                                     config.max_inflight_per_replica,
                                     RestartPolicy(config.restart_backoff_s, config.restart_backoff_max_s))
        self._control_task: asyncio.Task | None = None
        self._register_gauges()

    def _register_gauges(self) -> None:
        gauges = self.metrics.gauges
        gauges["oserve_plan_version"] = lambda: {(): float(self.router.table.version)}
        gauges["oserve_queue_depth"] = lambda: {
            (("replica", h.name),): float(h.num_inflight) for h in self.router.table.handles}
        gauges["oserve_replica_up"] = lambda: {
            (("replica", h.name), ("state", h.state.value)): 1.0 for h in self.router.table.handles}
        gauges["oserve_inflight_requests"] = lambda: {(): float(self.router.num_inflight)}
        gauges["oserve_measured_rate_rps"] = self._rate_gauge
        gauges["oserve_engine_waiting_requests"] = lambda: self._load_gauge("num_waiting")
        gauges["oserve_engine_kv_cache_usage"] = lambda: self._load_gauge("kv_cache_usage")
        gauges["oserve_engine_preemptions"] = lambda: self._load_gauge("num_preemptions")

    def _load_gauge(self, field_name: str) -> dict:
        """One field of each replica's own load report (replicas that do not report it are left out)."""
        out = {}
        for h in self.router.table.handles:
            value = getattr(h.engine.load(), field_name)
            if value is not None:
                out[(("replica", h.name),)] = float(value)
        return out

    def _rate_gauge(self) -> dict:
        rates = self.controller.rates.rates_rps(self.clock.now_s())
        return {(("type", self.router.table.type_name(t)),): r for t, r in enumerate(rates)}

    async def start(self) -> None:
        await self.controller.start()
        if self.config.check_interval_s > 0:
            self._control_task = asyncio.create_task(self.controller.run())

    async def stop(self) -> None:
        if self._control_task is not None:
            self._control_task.cancel()
            await asyncio.gather(self._control_task, return_exceptions=True)
        await self.controller.stop()

    async def __aenter__(self) -> ServingRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def admin_state(self) -> dict:
        table = self.router.table
        step = self.controller.last_step
        return {
            "model": self.model_name,
            "plan_version": table.version,
            "plan": table.plan.to_dict(),
            "replicas": [{"name": h.name, "state": h.state.value, "inflight": h.num_inflight,
                          "served": h.num_served, "failed": h.num_failed,
                          "engine": h.engine.info.name} for h in table.handles],
            "measured_rates_rps": list(self.controller.rates.rates_rps(self.clock.now_s())),
            "last_decision": None if step is None else {
                "switch": step.decision.switch, "reason": step.decision.reason,
                "mix_distance": step.mix_distance, "volume_ratio": step.volume_ratio},
            "history": [{"version": r.version, "applied_at_s": r.applied_at_s, "reason": r.reason,
                         "deployment": r.plan["deployment"]} for r in self.controller.history],
        }

    def is_healthy(self) -> bool:
        return any(h.state is ReplicaState.ACTIVE for h in self.router.table.handles)


__all__ = ["RuntimeConfig", "ServingRuntime"]
