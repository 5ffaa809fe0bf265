"""Trace-driven discrete-event simulator of a cluster serving a plan (imports nothing from runtime)."""

from oserve.sim.api import simulate_plan
from oserve.sim.config import SimConfig
from oserve.sim.metrics import SimResult, summarize

__all__ = ["SimConfig", "SimResult", "simulate_plan", "summarize"]
