"""What a simulation produces: per-request records, per-replica statistics, and their summary."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oserve.workload.latency_summary import latency_summary

DROP_REASONS = ("exceeds_context", "exceeds_kv_capacity", "unfinished_at_horizon")


@dataclass(frozen=True)
class ReplicaStats:
    replica_id: int
    label: str
    busy_s: float
    utilisation: float  # busy time over the run's span
    busy_frac_by_bin: tuple[float, ...]  # busy fraction in consecutive util_bin_s bins
    peak_kv_frac: float
    num_steps: int
    num_events: int
    num_preemptions: int
    num_requests: int
    prefill_tokens: int
    decode_tokens: int


@dataclass
class SimResult:
    """Per-request arrays, aligned with the simulated trace. Times are seconds; NaN where not reached."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    type_id: np.ndarray
    replica_id: np.ndarray  # -1 for requests never routed
    num_preemptions: np.ndarray
    drop_reason: np.ndarray  # '' for completed requests
    replicas: list[ReplicaStats]
    end_s: float
    wall_s: float
    num_events: int
    in_system_area: float  # integral of the number of requests in the system over time
    util_bin_s: float = 60.0
    meta: dict = field(default_factory=dict)

    @property
    def completed(self) -> np.ndarray:
        return ~np.isnan(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time between output tokens after the first (NaN for one-token outputs)."""
        steps = self.output_tokens - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(steps > 0, (self.finish_s - self.first_token_s) / steps, np.nan)

    def write_replicas_csv(self, path: str | Path) -> None:
        """Per replica and time bin: busy fraction; plus each replica's totals."""
        with Path(path).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["replica", "config", "bin_start_s", "busy_frac", "utilisation", "requests",
                             "peak_kv_frac", "preemptions", "engine_steps"])
            for r in self.replicas:
                for b, frac in enumerate(r.busy_frac_by_bin):
                    writer.writerow([r.replica_id, r.label, b * self.util_bin_s, f"{frac:.4f}",
                                     f"{r.utilisation:.4f}", r.num_requests, f"{r.peak_kv_frac:.4f}",
                                     r.num_preemptions, r.num_steps])

    def replica_summary(self) -> list[dict]:
        return [{"replica": r.replica_id, "config": r.label, "utilisation": r.utilisation,
                 "requests": r.num_requests, "peak_kv_frac": r.peak_kv_frac,
                 "preemptions": r.num_preemptions} for r in self.replicas]

    def summary(self, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> dict:
        return summarize(self, slo_ttft_s, slo_tpot_s)

    def write_records_csv(self, path: str | Path) -> None:
        cols = {
            "request": np.arange(len(self.arrival_s)), "arrival_s": self.arrival_s,
            "first_token_s": self.first_token_s, "finish_s": self.finish_s, "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s, "e2e_s": self.e2e_s, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "type": self.type_id, "replica": self.replica_id,
            "preemptions": self.num_preemptions, "dropped": self.drop_reason,
        }
        with Path(path).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            for row in zip(*cols.values()):
                writer.writerow(_fmt(v) for v in row)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else f"{v:.6f}"
    return str(v)


def summarize(result: SimResult, slo_ttft_s: float | None = None,
              slo_tpot_s: float | None = None) -> dict[str, Any]:
    """Aggregates: counts and drops, the shared latency/SLO summary (``workload.latency_summary``, with
    per-type entries), throughput and utilisation."""
    done = result.completed
    n = len(done)
    start = float(result.arrival_s.min()) if n else 0.0
    last_finish = float(np.nanmax(result.finish_s)) if done.any() else start
    span = max(last_finish - start, 1e-9)
    out: dict[str, Any] = {"requests": n, "completed": int(done.sum()), "dropped": int(n - done.sum())}
    out["dropped_by_reason"] = {r: int((result.drop_reason == r).sum()) for r in DROP_REASONS
                                if (result.drop_reason == r).any()}
    out.update(latency_summary(result.ttft_s, result.tpot_s, result.e2e_s, done, slo_ttft_s, slo_tpot_s,
                               result.type_id))
    out["throughput_rps"] = float(done.sum() / span)
    tokens = result.input_tokens[done].sum() + result.output_tokens[done].sum()
    out["throughput_tok_s"] = float(tokens / span)
    out["output_tok_s"] = float(result.output_tokens[done].sum() / span)
    out["offered_rps"] = float(n / max(float(result.arrival_s.max()) - start, 1e-9)) if n > 1 else 0.0
    out["preemptions"] = int(result.num_preemptions.sum())
    out["mean_utilisation"] = float(np.mean([r.utilisation for r in result.replicas]))
    out["sim_wall_s"] = result.wall_s
    return out


@dataclass(frozen=True)
class Attainment:
    """Share of requests meeting their SLO: overall and per request type (None: no requests)."""

    overall: float
    per_type: tuple[float | None, ...]
    requests_per_type: tuple[int, ...]

    def meets(self, target: float) -> bool:
        """Every type with requests reaches the target (the goodput criterion)."""
        return all(a is None or a >= target for a in self.per_type)

    def to_dict(self) -> dict:
        return {"overall": self.overall, "per_type": list(self.per_type),
                "requests_per_type": list(self.requests_per_type)}


def slo_attainment(result: SimResult, ttft_bound_s: np.ndarray, tpot_bound_s: np.ndarray,
                   num_types: int) -> Attainment:
    """Per-request bounds (arrays aligned with the trace): a request meets its SLO when it completed,
    its TTFT (from arrival, queueing included) and its mean TPOT are within its bounds. A dropped or
    unfinished request misses; a one-token output has no TPOT and meets that bound."""
    ok = result.completed & (np.nan_to_num(result.ttft_s, nan=np.inf) <= ttft_bound_s)
    ok &= np.nan_to_num(result.tpot_s, nan=0.0) <= tpot_bound_s
    per_type, counts = [], []
    for t in range(num_types):
        mask = result.type_id == t
        counts.append(int(mask.sum()))
        per_type.append(float(ok[mask].mean()) if mask.any() else None)
    return Attainment(float(ok.mean()) if len(ok) else 1.0, tuple(per_type), tuple(counts))


def per_type_latency(result: SimResult, num_types: int) -> list[dict]:
    """P99 TTFT, TPOT and end-to-end latency of each type's completed requests (None if none)."""
    done = result.completed
    out = []
    for t in range(num_types):
        mask = done & (result.type_id == t)
        row = {}
        for name, values in (("ttft_s", result.ttft_s), ("tpot_s", result.tpot_s),
                             ("e2e_s", result.e2e_s)):
            v = values[mask]
            v = v[~np.isnan(v)]
            row[f"p99_{name}"] = float(np.percentile(v, 99)) if len(v) else None
        out.append(row)
    return out

