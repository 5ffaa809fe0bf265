"""REAL-DRIFT traces: windows of the real Azure traces stitched one after another, each at its real
arrival process, optionally replayed at another (or a ramping) rate over the same wall time.

A *rate-scaled replay* keeps the time axis (unlike ``Trace.scaled``, which compresses it): each request of
the source is replayed ``floor(f)`` or ``floor(f) + 1`` times (the extra copy with probability
``frac(f)``; ``f < 1`` thins), every copy beyond the original shifted by a uniform jitter within
``jitter_s`` (1 s), where ``f`` is the rate factor at the request's time (constant, or linear from ``f0`` to
``f1`` over the segment: a ramp). Per-window counts then grow ``f``-fold, so that forecasting has signal
above the Poisson floor, while the minute-scale shape of the real arrivals (bursts, on/off) is kept.
Lengths are the source requests' own. Everything is reproducible from the seed.

Spec: ``stitch:SEG,SEG,...`` with ``SEG = SOURCE/START-END[*F[~F1]]``, times in seconds of the source
(``azure-conv``, ``azure-code``, ``azure-mix`` or a file), e.g. ``stitch:azure-conv/0-1200,azure-code/0-1200``
(conversation, then code), ``stitch:azure-mix/0-1800*0.5~2`` (a ramp from half to twice the real rate).
Named presets (``REAL_DRIFT``) are the ones the documentation measures; ``real-drift:NAME`` loads one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.workload.trace import Trace, load_trace

STITCH_PREFIX = "stitch:"
REAL_DRIFT_PREFIX = "real-drift:"
REAL_DRIFT = {
    # conversation for 20 minutes, then code for 20 minutes, each at its real arrival process
    "conv-code": "azure-conv/0-1200,azure-code/0-1200",
    # conversation, code, then both merged, the last with a rate ramp from 1x to 2x
    "conv-code-mix": "azure-conv/0-900,azure-code/0-900,azure-mix/0-900*1~2",
    # a day in 40 minutes: the merged hour rising from a quarter of its rate to 1.25x and falling back
    "diurnal": "azure-mix/0-1200*0.25~1.25,azure-mix/1200-2400*1.25~0.25",
}
_SEG = re.compile(r"^(?P<src>[^/]+)/(?P<a>[0-9.]+)-(?P<b>[0-9.]+)(\*(?P<f0>[0-9.]+)(~(?P<f1>[0-9.]+))?)?$")


@dataclass(frozen=True)
class Segment:
    source: str
    start_s: float
    end_s: float
    rate_from: float = 1.0
    rate_to: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.start_s < self.end_s:
            raise ConfigError(f"stitch segment {self.source}: need 0 <= START < END, got "
                              f"{self.start_s:g}-{self.end_s:g}")
        if not (self.rate_from > 0 and self.rate_to > 0):
            raise ConfigError(f"stitch segment {self.source}: rate factors must be positive")

    def describe(self) -> str:
        rate = "" if self.rate_from == self.rate_to == 1.0 else (
            f" x{self.rate_from:g}" if self.rate_from == self.rate_to else
            f" x{self.rate_from:g}->{self.rate_to:g}")
        return f"{self.source}[{self.start_s:g}-{self.end_s:g} s]{rate}"


def parse_segments(spec: str) -> list[Segment]:
    """``SOURCE/START-END[*F[~F1]],...`` (ConfigError naming the bad segment)."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = _SEG.match(part)
        if m is None:
            raise ConfigError(f"stitch segment '{part}': expected SOURCE/START-END[*F[~F1]] "
                              "(seconds; F a rate factor, ~F1 a linear ramp to F1)")
        f0 = float(m["f0"]) if m["f0"] else 1.0
        f1 = float(m["f1"]) if m["f1"] else f0
        out.append(Segment(m["src"], float(m["a"]), float(m["b"]), f0, f1))
    if not out:
        raise ConfigError("stitch: needs at least one segment")
    return out


def replay_at_rate(trace: Trace, rate_from: float, rate_to: float | None = None, seed: int = 0,
                   jitter_s: float = 1.0) -> Trace:
    """``trace`` over the same time span at a rate factor (constant, or a linear ramp over the span)."""
    rate_to = rate_from if rate_to is None else rate_to
    n = len(trace)
    if n == 0:
        return trace
    rng = np.random.default_rng(seed)
    t = trace.arrival_s
    span = max(float(t[-1] - t[0]), 1e-9)
    factor = rate_from + (rate_to - rate_from) * (t - t[0]) / span
    copies = np.floor(factor).astype(np.int64) + (rng.random(n) < factor - np.floor(factor))
    idx = np.repeat(np.arange(n), copies)
    first = np.ones(len(idx), dtype=bool)
    first[1:] = idx[1:] != idx[:-1]  # the first copy keeps its real arrival time
    arrival = t[idx] + np.where(first, 0.0, rng.uniform(-jitter_s / 2, jitter_s / 2, len(idx)))
    arrival = np.clip(arrival, t[0], t[-1])
    order = np.argsort(arrival, kind="stable")
    return Trace(arrival[order], trace.input_tokens[idx][order], trace.output_tokens[idx][order],
                 trace.name, dict(trace.meta))


def stitched_trace(segments: list[Segment], seed: int = 0, name: str | None = None) -> Trace:
    """The segments one after another (each window re-based to start where the previous one ended)."""
    arrival, ins, outs, offset = [], [], [], 0.0
    for i, seg in enumerate(segments):
        part = load_trace(seg.source).window(seg.start_s, seg.end_s)
        if len(part) == 0:
            raise ConfigError(f"stitch segment {seg.describe()}: no request in that window")
        part = Trace(part.arrival_s - seg.start_s, part.input_tokens, part.output_tokens, part.name)
        if (seg.rate_from, seg.rate_to) != (1.0, 1.0):
            part = replay_at_rate(part, seg.rate_from, seg.rate_to, seed + i)
        arrival.append(part.arrival_s + offset)
        ins.append(part.input_tokens)
        outs.append(part.output_tokens)
        offset += seg.end_s - seg.start_s
    # one segment at a constant factor is a replay of real traffic, not a drift
    replay = len(segments) == 1 and segments[0].rate_from == segments[0].rate_to
    label = name or (("REAL-REPLAY " if replay else "REAL-DRIFT ")
                     + " then ".join(s.describe() for s in segments))
    return Trace(np.concatenate(arrival), np.concatenate(ins), np.concatenate(outs), label,
                 {"real_drift": not replay, "real_replay": replay,
                  "segments": [s.describe() for s in segments], "seed": seed})


def load_drift_trace(spec: str, seed: int = 0) -> Trace:
    """``stitch:SEGMENTS`` or ``real-drift:NAME`` (a preset of ``REAL_DRIFT``)."""
    if spec.startswith(REAL_DRIFT_PREFIX):
        key = spec[len(REAL_DRIFT_PREFIX):]
        if key not in REAL_DRIFT:
            raise ConfigError(f"unknown REAL-DRIFT trace '{key}'; choose one of {', '.join(REAL_DRIFT)}")
        return stitched_trace(parse_segments(REAL_DRIFT[key]), seed, f"REAL-DRIFT-{key}")
    if spec.startswith(STITCH_PREFIX):
        return stitched_trace(parse_segments(spec[len(STITCH_PREFIX):]), seed)
    raise ConfigError(f"not a drift trace spec: '{spec}' (stitch:... or real-drift:NAME)")


__all__ = ["REAL_DRIFT", "REAL_DRIFT_PREFIX", "STITCH_PREFIX", "Segment", "load_drift_trace",
           "parse_segments", "replay_at_rate", "stitched_trace"]
