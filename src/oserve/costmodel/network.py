"""Collective communication times: NCCL all-reduce (tensor parallelism) and send/recv (pipelines).

Times come from measured H100 NCCL profiles (Vidur's, condensed into ``data/nccl_h100.csv``), smoothed by a
running median and interpolated in message size; beyond the largest measured size the last measured
bandwidth extrapolates. For other GPU types the time is scaled by their intra-node link bandwidth relative
to the H100's NVLink (a datasheet ratio, not a measurement).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from oserve.common.errors import ConfigError

H100_INTRA_NODE_GBPS = 450.0


@dataclass(frozen=True)
class _Curve:
    sizes: np.ndarray
    times_ms: np.ndarray

    def at(self, size_bytes: float) -> float:
        if size_bytes <= self.sizes[-1]:
            return float(np.interp(size_bytes, self.sizes, self.times_ms))
        # Extrapolate with the bandwidth of the top decile of measured sizes.
        k = max(2, len(self.sizes) // 10)
        slope = (self.times_ms[-1] - self.times_ms[-k]) / (self.sizes[-1] - self.sizes[-k])
        slope = max(slope, self.times_ms[-1] / self.sizes[-1] * 0.5)
        return float(self.times_ms[-1] + slope * (size_bytes - self.sizes[-1]))


def _running_median(values: np.ndarray, window: int = 9) -> np.ndarray:
    half = window // 2
    padded = np.pad(values, half, mode="edge")
    # one vectorised median over all windows: the same per-window arithmetic as a loop of np.median
    return np.asarray(np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1))


@lru_cache(maxsize=1)
def _curves() -> dict[tuple[str, int, int], _Curve]:
    text = resources.files("oserve.data").joinpath("nccl_h100.csv").read_text()
    rows = csv.DictReader(io.StringIO("".join(line for line in text.splitlines(True)
                                              if not line.startswith("#"))))
    grouped: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for r in rows:
        key = (r["collective"], int(r["num_workers"]), int(r["intra_node"]))
        grouped.setdefault(key, []).append((float(r["size_bytes"]), float(r["median_ms"])))
    curves = {}
    for key, pts in grouped.items():
        pts.sort()
        sizes = np.array([p[0] for p in pts])
        curves[key] = _Curve(sizes, np.maximum.accumulate(_running_median(np.array([p[1] for p in pts]))))
    return curves


@lru_cache(maxsize=1)
def _all_reduce_workers() -> tuple[int, ...]:
    """The measured all-reduce worker counts, ascending (each call sorted them: 40% of its time)."""
    return tuple(sorted(n for (c, n, _) in _curves() if c == "all_reduce"))


def all_reduce_s(size_bytes: float, num_workers: int, intra_node_gbps: float = H100_INTRA_NODE_GBPS) -> float:
    """One all-reduce of ``size_bytes`` over ``num_workers`` GPUs of one node."""
    if num_workers <= 1:
        return 0.0
    curves = _curves()
    measured = _all_reduce_workers()
    if num_workers in measured:
        ms = curves[("all_reduce", num_workers, 1)].at(size_bytes)
    else:  # ring all-reduce moves 2(n-1)/n of the data: scale from the nearest measured size
        near = min(measured, key=lambda n: abs(n - num_workers))
        ms = curves[("all_reduce", near, 1)].at(size_bytes) * (
            (2 * (num_workers - 1) / num_workers) / (2 * (near - 1) / near))
    return ms * 1e-3 * (H100_INTRA_NODE_GBPS / intra_node_gbps)


def send_recv_s(size_bytes: float, same_node: bool, intra_node_gbps: float = H100_INTRA_NODE_GBPS) -> float:
    """One point-to-point transfer (a pipeline stage boundary)."""
    key = ("send_recv", 2, 1 if same_node else 0)
    if key not in _curves():
        raise ConfigError("NCCL profile lacks send_recv rows")
    scale = H100_INTRA_NODE_GBPS / intra_node_gbps if same_node else 1.0
    return _curves()[key].at(size_bytes) * 1e-3 * scale
