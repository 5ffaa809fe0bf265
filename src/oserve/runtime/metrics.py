"""Serving metrics kept in memory and rendered in the Prometheus text format (no client library)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0
    num: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, value)] += 1
        self.total += value
        self.num += 1


Labels = tuple[tuple[str, str], ...]


@dataclass
class Metrics:
    """Counters and histograms by label set; gauges are read at render time from callbacks."""

    counters: dict[tuple[str, Labels], float] = field(default_factory=lambda: defaultdict(float))
    histograms: dict[tuple[str, Labels], Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    gauges: dict[str, Callable[[], dict[Labels, float]]] = field(default_factory=dict)

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        self.counters[(name, labels)] += value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        self.histograms[(name, labels)].observe(value)

    def counter(self, name: str, **labels: str) -> float:
        """Sum of a counter over all label sets that contain the given labels (for tests and logs)."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.counters.items() if n == name and want <= set(lab))

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted({n for n, _ in self.counters}):
            lines.append(f"# TYPE {name} counter")
            for (n, labels), value in sorted(self.counters.items()):
                if n == name:
                    lines.append(f"{name}{_fmt(labels)} {value:g}")
        for name in sorted({n for n, _ in self.histograms}):
            lines.append(f"# TYPE {name} histogram")
            for (n, labels), h in sorted(self.histograms.items(), key=lambda kv: kv[0]):
                if n != name:
                    continue
                cumulative = 0
                for bound, count in zip(LATENCY_BUCKETS_S + (float("inf"),), h.counts):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f"{name}_bucket{_fmt(labels + (('le', le),))} {cumulative}")
                lines.append(f"{name}_sum{_fmt(labels)} {h.total:.6f}")
                lines.append(f"{name}_count{_fmt(labels)} {h.num}")
        for name, read in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            for labels, value in sorted(read().items()):
                lines.append(f"{name}{_fmt(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


__all__ = ["LATENCY_BUCKETS_S", "Metrics"]
