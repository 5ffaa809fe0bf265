"""Per-type arrival-rate series: what the forecasters read and predict."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.workload.rates import per_type_rates
from oserve.workload.request_types import RequestTypes
from oserve.workload.trace import Trace

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*$")
_UNIT_S = {"ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration_s(text: str | float) -> float:
    """'10s', '1m', '500ms', '2h' or a bare number of seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"cannot read duration '{text}': use e.g. 10s, 1m, 500ms, 2h")
        value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if value <= 0:
        raise ConfigError(f"duration must be positive, got '{text}'")
    return value


@dataclass(frozen=True)
class RateSeries:
    """Arrival rate (requests/s) of each type per window: ``rates_rps[w, t]``."""

    rates_rps: np.ndarray
    window_s: float
    type_names: tuple[str, ...]

    @property
    def num_windows(self) -> int:
        return self.rates_rps.shape[0]

    @property
    def num_types(self) -> int:
        return self.rates_rps.shape[1]


def rate_series(trace: Trace, types: RequestTypes, window_s: float) -> RateSeries:
    """Per-type rates of ``trace`` in consecutive windows, requests typed online (by prompt length).

    The last window is dropped when it is incomplete, so that no rate is underestimated.
    """
    labels = types.classify_online(trace.input_tokens)
    rates = per_type_rates(trace.arrival_s, labels, types.k, window_s)
    full = int(np.floor((float(trace.arrival_s[-1]) + 1e-9) / window_s)) if len(trace) else 0
    rates = rates[:max(1, full)]
    return RateSeries(rates, window_s, tuple(types.names()))
