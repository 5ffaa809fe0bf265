"""A vLLM replica's own Prometheus ``/metrics``, reduced to what the router and controller use.

vLLM exports (v1 engine, 0.8 and later) ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``
(gauges), ``vllm:kv_cache_usage_perc`` (a fraction in [0, 1]; ``vllm:gpu_cache_usage_perc`` in older
releases) and ``vllm:num_preemptions_total`` (a counter), each labelled per engine and model. Samples of
one name are summed over their labels (one replica may run several engine cores behind one server;
the KV usage is averaged). Pure: text in, ``VllmStats`` out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")


@dataclass(frozen=True)
class VllmStats:
    """One scrape of a replica: requests running and waiting, KV-cache use (0..1), preemptions so far."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions: int = 0


def parse_samples(text: str) -> dict[str, list[float]]:
    """Prometheus text exposition -> {metric name: [sample values]} (comments and bad lines skipped)."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            rest = rest.rpartition("}")[2]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            samples.setdefault(name.strip(), []).append(value)
    return samples


def parse_vllm_metrics(text: str) -> VllmStats:
    """The replica's load and KV pressure from its ``/metrics`` text."""
    samples = parse_samples(text)

    def first(names: tuple[str, ...]) -> list[float]:
        return next((samples[n] for n in names if n in samples), [])

    kv = first(KV_USAGE)
    return VllmStats(num_running=int(sum(samples.get(RUNNING, []))),
                     num_waiting=int(sum(samples.get(WAITING, []))),
                     kv_cache_usage=sum(kv) / len(kv) if kv else 0.0,
                     num_preemptions=int(sum(first(PREEMPTIONS))))


__all__ = ["VllmStats", "parse_samples", "parse_vllm_metrics"]
