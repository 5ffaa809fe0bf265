"""When to re-plan: a pure decision with hysteresis on the measured per-type rates.

A re-plan is due when the measured mix or volume has drifted from the rates the current plan was made for
(mix: half the L1 distance of the normalised rate vectors; volume: ratio of total rates), the drift has
lasted ``confirm_checks`` consecutive checks, and at least ``cooldown_s`` passed since the last switch.
Requiring the drift to persist and to exceed a threshold keeps the fleet from flapping on noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class ReplanConfig(BaseModel):
    """Thresholds of the re-plan decision (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mix_threshold: float = Field(0.15, ge=0, le=1)  # total-variation distance, planned vs measured mix
    volume_ratio: float = Field(1.5, ge=1, allow_inf_nan=False)  # re-plan beyond x1.5 or /1.5
    confirm_checks: int = Field(3, ge=1)
    cooldown_s: float = Field(120.0, ge=0, allow_inf_nan=False)
    min_total_rps: float = Field(0.05, ge=0)  # below this, traffic is too thin to plan on


@dataclass(frozen=True)
class ReplanState:
    num_drifted_checks: int = 0
    last_switch_s: float = float("-inf")


@dataclass(frozen=True)
class ReplanDecision:
    should_replan: bool
    state: ReplanState
    reason: str
    mix_distance: float
    volume_ratio: float


def drift(planned_rps: Sequence[float], measured_rps: Sequence[float]) -> tuple[float, float]:
    """(mix distance in [0, 1], ratio measured total / planned total)."""
    planned_total, measured_total = sum(planned_rps), sum(measured_rps)
    if planned_total <= 0 or measured_total <= 0:
        return (1.0 if measured_total > 0 else 0.0), (float("inf") if planned_total <= 0 else 0.0)
    mix = 0.5 * sum(abs(p / planned_total - m / measured_total)
                    for p, m in zip(planned_rps, measured_rps))
    return mix, measured_total / planned_total


def decide(config: ReplanConfig, state: ReplanState, planned_rps: Sequence[float],
           measured_rps: Sequence[float], now_s: float) -> ReplanDecision:
    mix, ratio = drift(planned_rps, measured_rps)
    if sum(measured_rps) < config.min_total_rps:
        return ReplanDecision(False, ReplanState(0, state.last_switch_s), "too little traffic", mix, ratio)
    drifted = mix > config.mix_threshold or not (1 / config.volume_ratio <= ratio <= config.volume_ratio)
    if not drifted:
        return ReplanDecision(False, ReplanState(0, state.last_switch_s), "within hysteresis band", mix,
                              ratio)
    count = state.num_drifted_checks + 1
    if count < config.confirm_checks:
        return ReplanDecision(False, ReplanState(count, state.last_switch_s),
                              f"drift seen {count}/{config.confirm_checks} checks", mix, ratio)
    if now_s - state.last_switch_s < config.cooldown_s:
        return ReplanDecision(False, ReplanState(count, state.last_switch_s), "cooling down", mix, ratio)
    reason = f"drift: mix distance {mix:.2f}, volume x{ratio:.2f}"
    return ReplanDecision(True, ReplanState(0, now_s), reason, mix, ratio)


__all__ = ["ReplanConfig", "ReplanDecision", "ReplanState", "decide", "drift"]
