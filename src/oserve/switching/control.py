"""One control step, shared by the simulator's adaptive loop and the server's controller.

Each check the caller measures per-type rates (``oserve.workload.rate_window``) and passes them with the
current replicas. With a drift gate configured (``replan_gate.ReplanConfig``), the step first asks the
gate; a closed gate holds without re-planning. Otherwise (or once the gate opens) it asks the cost-aware
policy (``policy.decide``), which re-plans warm-started from the current replicas and switches only when
the expected gain pays for the switch. The result is always a ``SwitchDecision``; the caller executes
its ``transition`` (switch) or re-weights the current replicas with its ``plan`` (hold). The step is
pure: the caller keeps the gate's count and the time of its last switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from oserve.planner.plan import Replica
from oserve.switching.policy import SwitchContext, SwitchDecision, SwitchParams, decide
from oserve.switching.replan_gate import GateDecision, ReplanConfig, drift, gate


@dataclass(frozen=True)
class ControlPolicy:
    """What the controller runs each check: the cost-aware policy, optionally behind the drift gate."""

    context: SwitchContext
    params: SwitchParams = SwitchParams()
    gate: ReplanConfig | None = None  # None: ask the policy every check
    redispatch: bool = True           # on hold, re-weight the current replicas for the measured mix
    min_total_rps: float = 0.0        # below this total forecast, hold: too little traffic to plan on
    # (0 by default: without a gate the step is then exactly ``decide``, as the simulator calls it)


@dataclass(frozen=True)
class ControlStep:
    decision: SwitchDecision
    num_drifted_checks: int  # the gate's count, to pass to the next step
    mix_distance: float
    volume_ratio: float
    gate: GateDecision | None = None  # None when no gate is configured


def control_step(policy: ControlPolicy, replicas: Sequence[Replica], planned_rps: Sequence[float],
                 forecast_rps: Sequence[float], last_switch_s: float | None, now_s: float,
                 num_drifted_checks: int = 0) -> ControlStep:
    """Decide what to run next from ``replicas`` (the plan made for ``planned_rps``) for the forecast."""
    if sum(forecast_rps) < policy.min_total_rps:
        mix, ratio = drift(planned_rps, forecast_rps)
        return ControlStep(SwitchDecision(False, "too little traffic", None), 0, mix, ratio)
    if policy.gate is not None:
        opened = gate(policy.gate, num_drifted_checks, planned_rps, forecast_rps, last_switch_s, now_s)
        if not opened.is_open:
            return ControlStep(SwitchDecision(False, opened.reason, None), opened.num_drifted_checks,
                               opened.mix_distance, opened.volume_ratio, opened)
        decision = decide(policy.context, policy.params, tuple(replicas), last_switch_s, now_s,
                          list(forecast_rps))
        return ControlStep(decision, opened.num_drifted_checks, opened.mix_distance,
                           opened.volume_ratio, opened)
    mix, ratio = drift(planned_rps, forecast_rps)
    decision = decide(policy.context, policy.params, tuple(replicas), last_switch_s, now_s,
                      list(forecast_rps))
    return ControlStep(decision, 0, mix, ratio)


__all__ = ["ControlPolicy", "ControlStep", "control_step"]
