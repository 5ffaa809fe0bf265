"""The latency and SLO summary of a run, one definition for the simulator and the load generator.

Given per-request TTFT, TPOT and end-to-end latency (seconds, NaN where not reached) and which requests
completed, it reports for each metric ``p50_<m>``, ``p90_<m>``, ``p99_<m>`` and ``mean_<m>`` over the
completed requests (``None`` when there are none), with ``<m>`` one of ``e2e_s``, ``ttft_s``, ``tpot_s``;
``slo_attainment``, the fraction of *all* requests that completed within the TTFT and TPOT bounds given
(``None`` without bounds; a one-token output has no TPOT and meets any TPOT bound); and, when request
types are given, the same keys per type under ``per_type`` (plus ``requests`` and ``completed``).
``oserve simulate``, ``oserve simulate-adaptive`` and ``oserve bench serve`` all report these keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)
METRICS = ("e2e_s", "ttft_s", "tpot_s")


def _percentiles(values: np.ndarray, name: str) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        out[f"p{p}_{name}"] = float(np.percentile(values, p)) if len(values) else None
    out[f"mean_{name}"] = float(values.mean()) if len(values) else None
    return out


def _latency(ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray, done: np.ndarray,
             slo_ttft_s: float | None, slo_tpot_s: float | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, values in (("e2e_s", e2e), ("ttft_s", ttft), ("tpot_s", tpot)):
        out.update(_percentiles(values[done], name))
    ok = done.copy()
    if slo_ttft_s is not None:
        ok &= np.nan_to_num(ttft, nan=np.inf) <= slo_ttft_s
    if slo_tpot_s is not None:
        ok &= np.nan_to_num(tpot, nan=0.0) <= slo_tpot_s
    has_slo = slo_ttft_s is not None or slo_tpot_s is not None
    out["slo_attainment"] = float(ok.mean()) if len(done) and has_slo else None
    return out


def latency_summary(ttft_s: Sequence[float] | np.ndarray, tpot_s: Sequence[float] | np.ndarray,
                    e2e_s: Sequence[float] | np.ndarray, completed: Sequence[bool] | np.ndarray,
                    slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
                    type_id: Sequence[int] | np.ndarray | None = None,
                    type_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Percentiles of TTFT, TPOT and end-to-end latency, SLO attainment, and the same per type.

    All arrays are per request and aligned; ``type_names[k]`` names type ``k`` (default ``T<k>``).
    """
    ttft, tpot, e2e = (np.asarray(a, dtype=np.float64) for a in (ttft_s, tpot_s, e2e_s))
    done = np.asarray(completed, dtype=bool)
    if not len(ttft) == len(tpot) == len(e2e) == len(done):
        raise ValueError("latency_summary: per-request arrays differ in length")
    out: dict[str, Any] = dict(_latency(ttft, tpot, e2e, done, slo_ttft_s, slo_tpot_s))
    if type_id is None:
        return out
    types = np.asarray(type_id, dtype=np.int64)
    num_types = max(len(type_names or ()), int(types.max()) + 1 if len(types) else 0)
    names = list(type_names or ()) + [f"T{k}" for k in range(len(type_names or ()), num_types)]
    per_type = {}
    for k in range(num_types):
        mask = types == k
        per_type[names[k]] = {"requests": int(mask.sum()), "completed": int(done[mask].sum()),
                              **_latency(ttft[mask], tpot[mask], e2e[mask], done[mask], slo_ttft_s,
                                         slo_tpot_s)}
    out["per_type"] = per_type
    return out


__all__ = ["METRICS", "PERCENTILES", "latency_summary"]
