"""Reference planners: ``default`` (what a vLLM user deploys unaided), ``homogeneous`` (the best single
configuration for this traffic, replicated: the static baseline given the same knowledge as oserve), and
``exhaustive`` (every deployment of a small cluster, to measure the search's optimality gap)."""

from __future__ import annotations

import itertools

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.planner.problem import Counts, PlanningProblem


def replicate(problem: PlanningProblem, index: int) -> Counts:
    """As many replicas of one configuration as the cluster's GPUs of its type hold."""
    cfg = problem.configs[index]
    n = problem.gpu_budget[cfg.gpu_type] // cfg.num_gpus
    counts = [0] * len(problem.configs)
    counts[index] = n
    while n > 0 and not problem.feasible(tuple(counts)):
        n -= 1
        counts[index] = n
    return tuple(counts)


def homogeneous(problem: PlanningProblem) -> Counts:
    """The single configuration whose replication carries the largest demand scale (on a cluster with
    several GPU types: one configuration per type, the best combination)."""
    per_type = [[replicate(problem, i) for i, c in enumerate(problem.configs) if c.gpu_type == t]
                for t in problem.gpu_budget]
    options = [tuple(map(sum, zip(*combo))) for combo in itertools.product(*per_type)]
    best = max(options, key=lambda c: (problem.scale(c), -sum(c)))
    if problem.scale(best) <= 0:
        raise InfeasiblePlanError("no homogeneous deployment serves every request type")
    return best


DEFAULT_MIN_KV_FRACTION = 0.25


def _kv_fraction(problem: PlanningProblem, index: int) -> float:
    """Share of a replica's usable GPU memory left for KV cache after the weights."""
    cfg = problem.configs[index]
    cost = problem.cost
    usable = cost.gpu(cfg).hbm_bytes * cost.params.gpu_memory_utilization - cost.params.reserved_bytes_per_gpu
    kv = cost.kv_capacity_tokens(cfg) * cost.kv_bytes_per_token_per_gpu(cfg)
    return kv / usable


def default(problem: PlanningProblem) -> Counts:
    """What a vLLM user deploys without a planner: the smallest power-of-two TP (PP = 1) that leaves at
    least a quarter of the GPU memory for KV cache, replicated over every GPU type's nodes."""
    counts = [0] * len(problem.configs)
    for gpu_type in problem.gpu_budget:
        own = [i for i, c in enumerate(problem.configs) if c.pp == 1 and c.gpu_type == gpu_type]
        roomy = [i for i in own if _kv_fraction(problem, i) >= DEFAULT_MIN_KV_FRACTION]
        pool = roomy or own
        if pool:
            j = min(pool, key=lambda i: problem.configs[i].tp)
            counts[j] = replicate(problem, j)[j]
    if not any(counts):
        raise InfeasiblePlanError("no configuration without pipeline parallelism fits the model")
    return tuple(counts)


MAX_EXHAUSTIVE_GPUS = 32


def exhaustive(problem: PlanningProblem) -> Counts:
    """Evaluate every count vector that fits the GPUs (only for small clusters)."""
    total = sum(problem.gpu_budget.values())
    if total > MAX_EXHAUSTIVE_GPUS:
        raise ConfigError(f"exhaustive planning is limited to {MAX_EXHAUSTIVE_GPUS} GPUs "
                          f"(cluster has {total}); use --planner oserve")
    best, best_scale = None, 0.0
    for counts in _maximal_vectors(problem):
        s = problem.scale(counts)
        if s > best_scale * (1 + 1e-9) or (best is not None and abs(s - best_scale) <= best_scale * 1e-9
                                            and sum(counts) < sum(best)):
            best, best_scale = counts, s
    if best is None:
        raise InfeasiblePlanError("no deployment serves every request type")
    return best


def _maximal_vectors(problem: PlanningProblem):
    """Count vectors within the GPU budget that leave no room for another replica.

    Leaving GPUs idle never raises the demand scale, so only maximal vectors can be optimal.
    """
    configs = problem.configs
    smallest = {t: min((c.num_gpus for c in configs if c.gpu_type == t), default=10 ** 9)
                for t in problem.gpu_budget}

    def walk(i: int, free: dict[str, int], prefix: list[int]):
        if i == len(configs):
            if all(free[t] < smallest[t] for t in free):
                yield tuple(prefix)
            return
        cfg = configs[i]
        for n in range(free[cfg.gpu_type] // cfg.num_gpus, -1, -1):
            rest = dict(free)
            rest[cfg.gpu_type] -= n * cfg.num_gpus
            yield from walk(i + 1, rest, prefix + [n])

    yield from walk(0, dict(problem.gpu_budget), [])
