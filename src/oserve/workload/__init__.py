"""Workload: request traces, request types, per-type arrival rates (fixed and sliding windows) and the
latency/SLO summary of a run."""

from oserve.workload.latency_summary import latency_summary
from oserve.workload.rate_window import RateWindow, window_rates
from oserve.workload.rates import per_type_rates
from oserve.workload.request_types import OnlineClassifier, RequestTypes, TypeStats, fit_request_types
from oserve.workload.trace import Trace, load_trace

__all__ = [
    "OnlineClassifier",
    "RateWindow",
    "RequestTypes",
    "Trace",
    "TypeStats",
    "fit_request_types",
    "latency_summary",
    "load_trace",
    "per_type_rates",
    "window_rates",
]
