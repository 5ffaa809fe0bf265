"""A vLLM or LMDeploy replica's own Prometheus ``/metrics``, reduced to what the router and controller use.

vLLM exports (v1 engine, 0.8 and later) ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``
(gauges), ``vllm:kv_cache_usage_perc`` (a fraction in [0, 1]; ``vllm:gpu_cache_usage_perc`` in older
releases) and ``vllm:num_preemptions_total`` (a counter), each labelled per engine and model. Samples of
one name are summed over their labels (one replica may run several engine cores behind one server;
the KV usage is averaged). LMDeploy's api_server (0.10 and later, metrics on by default since 0.18)
exports ``lmdeploy:num_requests_running``, ``lmdeploy:num_requests_waiting`` and
``lmdeploy:gpu_cache_usage_perc`` (no preemption counter). Pure: text in, ``ServerStats`` out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricNames:
    """A server's names for each signal; the first name present in a scrape is read."""

    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_usage: tuple[str, ...]
    preemptions: tuple[str, ...] = ()


VLLM_NAMES = MetricNames(("vllm:num_requests_running",), ("vllm:num_requests_waiting",),
                         ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
                         ("vllm:num_preemptions_total", "vllm:num_preemptions"))
LMDEPLOY_NAMES = MetricNames(("lmdeploy:num_requests_running",), ("lmdeploy:num_requests_waiting",),
                             ("lmdeploy:gpu_cache_usage_perc",))


@dataclass(frozen=True)
class ServerStats:
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


def parse_metrics(text: str, names: MetricNames) -> ServerStats:
    """The replica's load and KV pressure from its ``/metrics`` text, under the server's ``names``."""
    samples = parse_samples(text)

    def first(candidates: tuple[str, ...]) -> list[float]:
        return next((samples[n] for n in candidates if n in samples), [])

    kv = first(names.kv_usage)
    return ServerStats(num_running=int(sum(first(names.running))),
                       num_waiting=int(sum(first(names.waiting))),
                       kv_cache_usage=sum(kv) / len(kv) if kv else 0.0,
                       num_preemptions=int(sum(first(names.preemptions))))


def parse_vllm_metrics(text: str) -> ServerStats:
    return parse_metrics(text, VLLM_NAMES)


def parse_lmdeploy_metrics(text: str) -> ServerStats:
    return parse_metrics(text, LMDEPLOY_NAMES)


__all__ = ["LMDEPLOY_NAMES", "VLLM_NAMES", "MetricNames", "ServerStats", "parse_lmdeploy_metrics",
           "parse_metrics", "parse_samples", "parse_vllm_metrics"]
