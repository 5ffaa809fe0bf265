"""The cost-aware switching policy (``oserve.switching.policy.decide``) as the controller's switcher.

Each check, the controller passes the current plan, the time of the last switch, the time now and the
measured per-type rates (used as the forecast: the ``last`` baseline); the policy re-plans warm-started
from the current deployment and switches only when the expected gain over its horizon pays for the
switch (drain, weight transfer, restart). The same pure function drives the simulator's adaptive runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oserve.planner.plan import Plan


@dataclass(frozen=True)
class SwitchOutcome:
    switch: bool
    reason: str
    plan: Plan | None  # the plan to apply when ``switch``


Switcher = Callable[[Plan, float | None, float, Sequence[float]], SwitchOutcome]


def cost_aware_switcher(cluster, cost, type_template: Sequence, params=None, links=None) -> Switcher:
    """A switcher over ``oserve.switching``: cluster and cost model as for ``make_plan``; the template
    gives each type's shape (lengths), the rates come from the measurements."""
    from oserve.switching.links import LinkModel
    from oserve.switching.policy import SwitchContext, SwitchParams, decide

    context = SwitchContext(cluster, cost, tuple(type_template), links or LinkModel(cluster))
    switch_params = params or SwitchParams()

    def switcher(plan: Plan, last_switch_s: float | None, now_s: float,
                 rates_rps: Sequence[float]) -> SwitchOutcome:
        decision = decide(context, switch_params, plan.replicas, last_switch_s, now_s, list(rates_rps))
        return SwitchOutcome(decision.switch, decision.reason, decision.plan if decision.switch else None)

    return switcher


__all__ = ["SwitchOutcome", "Switcher", "cost_aware_switcher"]
