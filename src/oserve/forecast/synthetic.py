"""SYNTHETIC multi-hour traces whose composition drifts over a day (for forecasting and switching).

The shipped Azure traces span one hour, too short for day/night patterns. This generator is labelled
synthetic everywhere it appears: each source (by default the Azure conversation and code traces) gets a
sinusoidal daily rate with its own phase, times a slowly varying random factor (an AR(1) process on
log rate per ``burst_step_s``), and requests arrive as a non-homogeneous Poisson process (thinning).
Each request's prompt and output lengths are drawn, with replacement, from its source's real requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.workload.drift import REAL_DRIFT_PREFIX, STITCH_PREFIX, load_drift_trace
from oserve.workload.trace import Trace, load_trace


@dataclass(frozen=True)
class DiurnalSource:
    trace: str  # a built-in trace name or a file: where request lengths are drawn from
    mean_rate_rps: float
    amplitude: float = 0.6  # rate swings by +-amplitude around the mean over a period
    phase_rad: float = 0.0


@dataclass(frozen=True)
class DiurnalSpec:
    duration_s: float = 6 * 3600.0
    period_s: float = 6 * 3600.0  # one synthetic "day" (compressed by default so a run sees one)
    sources: tuple[DiurnalSource, ...] = (
        DiurnalSource("azure-conv", 5.0, 0.7, 0.0),
        DiurnalSource("azure-code", 3.0, 0.7, math.pi),
    )
    burst_sigma: float = 0.15  # stationary std of the log-rate noise
    burst_step_s: float = 60.0
    burst_corr: float = 0.9  # AR(1) coefficient between consecutive steps

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.period_s <= 0 or self.burst_step_s <= 0:
            raise ConfigError("synthetic trace durations must be positive")
        if not self.sources:
            raise ConfigError("a synthetic trace needs at least one source")
        for s in self.sources:
            if s.mean_rate_rps <= 0 or not 0 <= s.amplitude < 1:
                raise ConfigError("each source needs a positive rate and an amplitude in [0, 1)")


def source_rate_rps(source: DiurnalSource, spec: DiurnalSpec, t_s: np.ndarray) -> np.ndarray:
    """The deterministic (noise-free) daily rate of one source."""
    return source.mean_rate_rps * (1 + source.amplitude * np.sin(2 * np.pi * t_s / spec.period_s
                                                                  + source.phase_rad))


def _noise_factor(spec: DiurnalSpec, rng: np.random.Generator) -> np.ndarray:
    steps = int(math.ceil(spec.duration_s / spec.burst_step_s)) + 1
    innov = spec.burst_sigma * math.sqrt(1 - spec.burst_corr ** 2)
    log = np.zeros(steps)
    log[0] = rng.normal(0, spec.burst_sigma)
    for i in range(1, steps):
        log[i] = spec.burst_corr * log[i - 1] + rng.normal(0, innov)
    return np.exp(log - spec.burst_sigma ** 2 / 2)  # mean-one factor


def _arrivals(source: DiurnalSource, spec: DiurnalSpec, rng: np.random.Generator) -> np.ndarray:
    noise = _noise_factor(spec, rng)
    peak = source.mean_rate_rps * (1 + source.amplitude) * float(noise.max())
    n = rng.poisson(peak * spec.duration_s)
    times = np.sort(rng.uniform(0, spec.duration_s, n))
    rate = source_rate_rps(source, spec, times) * noise[(times // spec.burst_step_s).astype(int)]
    return times[rng.uniform(0, peak, n) < rate]


def synthetic_diurnal_trace(spec: DiurnalSpec = DiurnalSpec(), seed: int = 0) -> Trace:
    """A SYNTHETIC trace: see the module docstring. Reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    parts = []
    for source in spec.sources:
        lengths = load_trace(source.trace)
        times = _arrivals(source, spec, rng)
        pick = rng.integers(0, len(lengths), len(times))
        parts.append(Trace(times, lengths.input_tokens[pick], lengths.output_tokens[pick], source.trace))
    merged = Trace.merge(parts)
    meta = {"synthetic": True, "generator": "oserve.forecast.synthetic.synthetic_diurnal_trace",
            "seed": seed, "period_s": spec.period_s, "duration_s": spec.duration_s}
    return Trace(merged.arrival_s, merged.input_tokens, merged.output_tokens,
                 f"SYNTHETIC-diurnal-{spec.duration_s / 3600:g}h-seed{seed}", meta)


SYNTHETIC_PREFIX = "synthetic-diurnal"
PHASES_PREFIX = "phases:"


def phased_trace(specs: list[str]) -> Trace:
    """Traces played one after another (each starts when the previous one's last request arrived)."""
    if not specs:
        raise ConfigError("phases: needs at least one trace")
    arrival, ins, outs, offset = [], [], [], 0.0
    for spec in specs:
        t = load_trace(spec)
        arrival.append(t.arrival_s + offset)
        ins.append(t.input_tokens)
        outs.append(t.output_tokens)
        offset += float(t.arrival_s[-1]) + 1e-3
    return Trace(np.concatenate(arrival), np.concatenate(ins), np.concatenate(outs),
                 " then ".join(specs), {"phases": list(specs)})


def load_any_trace(spec: str, seed: int = 0) -> Trace:
    """A trace file or built-in; ``synthetic-diurnal[:HOURS[:RPS]]`` (SYNTHETIC: HOURS long, default
    12, one day = min(6, HOURS) h; with RPS, conversation and code sources at RPS each in opposite
    phase, so the total is steady and the mix swings); ``phases:A,B,...``, traces one after another;
    ``stitch:...`` or ``real-drift:NAME`` (REAL-DRIFT windows of the real traces, ``workload.drift``)."""
    if spec.startswith((STITCH_PREFIX, REAL_DRIFT_PREFIX)):
        return load_drift_trace(spec, seed)
    if spec.startswith(SYNTHETIC_PREFIX):
        parts = spec.split(":")[1:]
        try:
            hours = float(parts[0]) if parts else 12.0
            rps = float(parts[1]) if len(parts) > 1 else None
        except ValueError:
            raise ConfigError(f"expected {SYNTHETIC_PREFIX}[:HOURS[:RPS]], got '{spec}'") from None
        spec_ = DiurnalSpec(duration_s=hours * 3600.0, period_s=min(6.0, hours) * 3600.0)
        if rps is not None:
            spec_ = DiurnalSpec(spec_.duration_s, spec_.period_s, (
                DiurnalSource("azure-conv", rps, 0.8, 0.0), DiurnalSource("azure-code", rps, 0.8, math.pi)))
        return synthetic_diurnal_trace(spec_, seed)
    if spec.startswith(PHASES_PREFIX):
        return phased_trace([s.strip() for s in spec[len(PHASES_PREFIX):].split(",") if s.strip()])
    return load_trace(spec)
