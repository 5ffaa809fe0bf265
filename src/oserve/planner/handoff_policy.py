"""Which decode replica of a disaggregated group takes a prefilled sequence: the policy the simulator's
hand-off and the runtime's disaggregated router step share."""

from __future__ import annotations

from collections.abc import Sequence


def least_loaded(loads: Sequence[int]) -> int:
    """Index of the decode replica with the fewest sequences (served, queued or on their way); the
    lower index on ties."""
    if not loads:
        raise ValueError("least_loaded needs at least one decode replica")
    return min(range(len(loads)), key=lambda i: (loads[i], i))


__all__ = ["least_loaded"]
