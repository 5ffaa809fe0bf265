"""Workload: request traces, request types and per-type arrival rates."""

from oserve.workload.rates import per_type_rates
from oserve.workload.request_types import OnlineClassifier, RequestTypes, TypeStats, fit_request_types
from oserve.workload.trace import Trace, load_trace

__all__ = [
    "OnlineClassifier",
    "RequestTypes",
    "Trace",
    "TypeStats",
    "fit_request_types",
    "load_trace",
    "per_type_rates",
]
