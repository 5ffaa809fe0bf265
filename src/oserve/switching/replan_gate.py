"""The drift gate: a cheap test, with hysteresis, of whether the measured traffic moved away from what
the current plan was made for, run before the cost-aware policy's re-plan.

The gate opens when the measured mix or volume has drifted from the planned per-type rates (mix: half
the L1 distance of the normalised rate vectors; volume: ratio of total rates), the drift has lasted
``confirm_checks`` consecutive checks, and at least ``cooldown_s`` passed since the last switch.
Requiring the drift to persist and to exceed a threshold keeps the fleet from re-planning on noise, and
keeps the policy's search (seconds of CPU) from running every check while nothing changes. An open gate
does not switch by itself: ``oserve.switching.control.control_step`` then asks ``policy.decide``, which
switches only when the gain pays for the switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class ReplanConfig(BaseModel):
    """Thresholds of the drift gate (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mix_threshold: float = Field(0.15, ge=0, le=1)  # total-variation distance, planned vs measured mix
    volume_ratio: float = Field(1.5, ge=1, allow_inf_nan=False)  # open beyond x1.5 or /1.5
    confirm_checks: int = Field(3, ge=1)
    cooldown_s: float = Field(120.0, ge=0, allow_inf_nan=False)
    min_total_rps: float = Field(0.05, ge=0)  # below this, traffic is too thin to plan on


@dataclass(frozen=True)
class GateDecision:
    is_open: bool
    num_drifted_checks: int  # carry into the next check
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


def gate(config: ReplanConfig, num_drifted_checks: int, planned_rps: Sequence[float],
         measured_rps: Sequence[float], last_switch_s: float | None, now_s: float) -> GateDecision:
    """Whether to consider re-planning now; ``num_drifted_checks`` is the previous decision's count."""
    mix, ratio = drift(planned_rps, measured_rps)
    if sum(measured_rps) < config.min_total_rps:
        return GateDecision(False, 0, "too little traffic", mix, ratio)
    drifted = mix > config.mix_threshold or not (1 / config.volume_ratio <= ratio <= config.volume_ratio)
    if not drifted:
        return GateDecision(False, 0, "within hysteresis band", mix, ratio)
    count = num_drifted_checks + 1
    if count < config.confirm_checks:
        return GateDecision(False, count, f"drift seen {count}/{config.confirm_checks} checks", mix, ratio)
    if last_switch_s is not None and now_s - last_switch_s < config.cooldown_s:
        return GateDecision(False, count, "cooling down", mix, ratio)
    return GateDecision(True, 0, f"drift: mix distance {mix:.2f}, volume x{ratio:.2f}", mix, ratio)


__all__ = ["GateDecision", "ReplanConfig", "drift", "gate"]
