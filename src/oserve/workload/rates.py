"""Per-type arrival rates over fixed windows: the signal the forecaster and the controller watch."""

from __future__ import annotations

import numpy as np

from oserve.common.errors import ConfigError


def per_type_rates(arrival_s: np.ndarray, labels: np.ndarray, k: int, window_s: float,
                   duration_s: float | None = None) -> np.ndarray:
    """Arrival rate (requests/s) of each type in consecutive windows: shape (num_windows, k)."""
    if window_s <= 0:
        raise ConfigError(f"window must be positive, got {window_s} s")
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    end = duration_s if duration_s is not None else (float(arrival_s.max()) if len(arrival_s) else 0.0)
    num_windows = max(1, int(np.ceil((end + 1e-9) / window_s)))
    idx = np.minimum((arrival_s // window_s).astype(np.int64), num_windows - 1)
    counts = np.zeros((num_windows, k))
    np.add.at(counts, (idx, np.asarray(labels, dtype=np.int64)), 1.0)
    return counts / window_s
