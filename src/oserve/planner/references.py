"""Reference planners: ``default`` (what a vLLM user deploys unaided), ``homogeneous`` (the best single
configuration for this traffic, replicated: the static baseline given the same knowledge as oserve), and
``exhaustive`` (every deployment of a small cluster, to measure the search's optimality gap)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.planner.milp import best_homogeneous
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
    several GPU types: one configuration per type, the best combination).

    With one GPU type every configuration is evaluated (one LP each). With several, one MILP
    (``milp.best_homogeneous``) finds the best scale, so the cost adds over GPU types instead of
    multiplying (four types of 9 configurations: one small MILP, not 9^4 LPs); then ties are broken as
    the enumeration breaks them (fewest replicas, then the first combination in per-type order) by
    swapping one type's configuration at a time while that improves the enumeration's key, exact LP
    scales compared. ``homogeneous_by_enumeration`` is the reference it is tested against.
    """
    per_type = _replicated_per_type(problem)
    if len(per_type) > 1:
        replicated = tuple(map(sum, zip(*(o for options in per_type for o in options))))
        best = best_homogeneous(problem, replicated)
        if best is not None and problem.scale(best) > 0:
            return _first_of_ties(problem, per_type, best)
    return homogeneous_by_enumeration(problem)


def _replicated_per_type(problem: PlanningProblem) -> list[list[Counts]]:
    """Per GPU type (that some configuration fits), each of its configurations replicated."""
    per_type = [[replicate(problem, i) for i, c in enumerate(problem.configs) if c.gpu_type == t]
                for t in problem.gpu_budget]
    return [options for options in per_type if options]


def _first_of_ties(problem: PlanningProblem, per_type: list[list[Counts]], start: Counts) -> Counts:
    """From the best-scale combination, walk to the one the enumeration keeps among equal scales."""
    choice = [next((j for j, o in enumerate(options) if any(a and b for a, b in zip(o, start))), 0)
              for options in per_type]

    def counts_of(ch: list[int]) -> Counts:
        return tuple(map(sum, zip(*(options[j] for options, j in zip(per_type, ch)))))

    def better(a: list[int], b: list[int]) -> bool:  # a before b in the enumeration's max
        ka, kb = counts_of(a), counts_of(b)
        key_a, key_b = (problem.scale(ka), -sum(ka)), (problem.scale(kb), -sum(kb))
        return key_a > key_b or (key_a == key_b and a < b)

    improved = True
    while improved:
        improved = False
        for g, options in enumerate(per_type):
            for j in range(len(options)):
                trial = choice[:g] + [j] + choice[g + 1:]
                if j != choice[g] and better(trial, choice):
                    choice, improved = trial, True
    return counts_of(choice)


def homogeneous_by_enumeration(problem: PlanningProblem) -> Counts:
    """``homogeneous`` by evaluating every combination of one configuration per GPU type."""
    per_type = _replicated_per_type(problem)
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
    best: Counts | None = None
    best_scale = 0.0
    for counts in _maximal_vectors(problem):
        s = problem.scale(counts)
        if s > best_scale * (1 + 1e-9) or (best is not None and abs(s - best_scale) <= best_scale * 1e-9
                                            and sum(counts) < sum(best)):
            best, best_scale = counts, s
    if best is None:
        raise InfeasiblePlanError("no deployment serves every request type")
    return best


def _maximal_vectors(problem: PlanningProblem) -> Iterator[Counts]:
    """Count vectors within the GPU budget that leave no room for another replica.

    Leaving GPUs idle never raises the demand scale, so only maximal vectors can be optimal.
    """
    configs = problem.configs
    smallest = {t: min((c.num_gpus for c in configs if c.gpu_type == t), default=10 ** 9)
                for t in problem.gpu_budget}

    def walk(i: int, free: dict[str, int], prefix: list[int]) -> Iterator[Counts]:
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
