"""Factories for simulator tests: replicas with a constant step time, small workloads."""

from __future__ import annotations

import numpy as np

from oserve.planner.dispatch_policy import DispatchTable
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.metrics import SimResult
from oserve.sim.simulator import ReplicaSetup, Simulation
from oserve.sim.step_timer import ConstantStepTimer, StepTimer


def make_sim(num_replicas: int = 1, step_s: float = 0.01, kv_blocks: int = 10_000,
             mode: str = "chunked", max_num_seqs: int = 256, max_tokens: int = 8192,
             timer: StepTimer | None = None, weights=None, decode_runs: bool = True,
             block_tokens: int = 16, **config) -> Simulation:
    timer = timer or ConstantStepTimer(step_s)
    setups = [ReplicaSetup(f"r{i}", timer, kv_blocks) for i in range(num_replicas)]
    weights = weights or ((1.0 / num_replicas,) * num_replicas,)
    config.setdefault("watermark_frac", 0.0)
    return Simulation(setups, DispatchTable(tuple(tuple(w) for w in weights)), SimConfig(**config),
                      BatchingConfig(mode, max_num_seqs, max_tokens), block_tokens,
                      decode_runs=decode_runs)


def run(sim: Simulation, arrivals, inputs, outputs, types=None) -> SimResult:
    n = len(arrivals)
    types = np.zeros(n, dtype=np.int64) if types is None else np.asarray(types)
    return sim.run(np.asarray(arrivals, dtype=float), np.asarray(inputs), np.asarray(outputs), types)


def poisson_workload(n: int, rate_rps: float, seed: int = 0, max_in: int = 2000, max_out: int = 400):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_rps, n))
    inputs = rng.integers(1, max_in, n)
    outputs = rng.integers(1, max_out, n)
    return arrivals, inputs, outputs
