"""The SLO spill rule: the dispatch may leave the plan for a replica whose predicted SLO slack allows it.

A plan dedicates replicas to request types by their mean rates (the LP's *primary* fractions). Under a
burst of one type its few replicas queue while others have room; a homogeneous fleet absorbs the burst
everywhere (statistical multiplexing). The spill rule gives that back without giving up the plan: the
policy first picks the primary replica (weighted least outstanding within the plan), then

1. predicts this request's TTFT on it from the replica's state (below); while that is within half the
   type's TTFT SLO (``SPILL_AT``) the request stays there;
2. otherwise it goes to the replica, among all that accept work and have a free seat, with the least
   predicted TTFT that meets the TTFT SLO and whose predicted TPOT while it prefills the request is
   within the type's TPOT SLO (or no worse than the primary's); when none qualifies it stays on the
   primary (the request misses either way; spilling it would only take slack from another type).

**Prediction** (``predict``), per replica, from the same step times the latency model uses
(``costmodel.latency_model``): the replica holds ``P`` prompt tokens of requests without a first token
(queued or mid-prefill, served first come first served) and ``B`` decoding sequences. vLLM's chunked
prefill fills each step's budget ``C`` with one token per decode and ``C' = C - B`` prompt tokens, so
this request's first token comes after ``ceil((P + I) / C')`` steps of ``d(B) + m(C')`` each, ``d`` the
decode step and ``m`` what a chunk of prompt tokens adds to it (linear in the tokens). TPOT impact: while
the backlog drains every step carries a chunk, ``d(B + 1) + m(min(C', P + I))``. Arrivals after this one
queue behind it (FCFS), so they do not enter its TTFT; decodes finishing or starting do, and are ignored.

``spill_choice`` is pure (sequences in, an index out) and is the one function the simulator's router
(``sim.router``) and the runtime's dispatch (``runtime.dispatch_policy``), both through
``planner.dispatch_policy``, call. ``ReplicaSpeed.of`` derives a replica's step times from the cost
model, so both sides predict with the same numbers. ``trace_type_slos`` (each type's SLO on a trace) and
``PlanSpillRules`` (the rule of a plan's replicas) are how both build it: the simulator from the prepared
trace and the plan it simulates, ``oserve serve`` from its trace, its plan and ``--slo`` (and again for
every plan a live switch brings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.latency_model import REF_CTX_TOKENS, ReplicaLatencyModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.workload.request_types import RequestTypes
from oserve.workload.slo import Slo, SloSpec

# Spill once the primary's predicted TTFT passes half the type's TTFT SLO. The prediction ignores the
# prefills ahead that become decodes (and slow every later step), so it is optimistic under a burst;
# spilling at the SLO itself spills too late (tests/sim/test_slo_spill.py's bursty case: goodput 3.3x
# at 1.0, 5.5x at 0.5, 5.9x at 0.25 against 2.6x without spilling; 0.5 keeps most requests on the plan).
SPILL_AT = 0.5


@dataclass(frozen=True)
class ReplicaSpeed:
    """One replica's step times: ``d(B) = decode_base_s + decode_per_seq_s * B`` and a prompt chunk of
    c tokens adding ``c * prefill_s_per_token``; its chunk budget and seats."""

    budget_tokens: int
    max_seqs: int
    decode_base_s: float
    decode_per_seq_s: float
    prefill_s_per_token: float

    def __post_init__(self) -> None:
        if self.budget_tokens < 1 or self.max_seqs < 1:
            raise ConfigError("a replica speed needs a positive chunk budget and seat count")
        if min(self.decode_base_s, self.decode_per_seq_s, self.prefill_s_per_token) < 0:
            raise ConfigError("a replica speed's step times must be non-negative")

    def decode_s(self, batch: int) -> float:
        return self.decode_base_s + self.decode_per_seq_s * max(batch, 1)

    @staticmethod
    def of(model: ReplicaLatencyModel, ctx_tokens: float = REF_CTX_TOKENS) -> ReplicaSpeed:
        """The latency model's step times, the decode step made affine between 1 and ``max_seqs``
        sequences of ``ctx_tokens`` context and the full chunk's extra time spread over its tokens."""
        n = model.max_seqs
        d1, dn = model.decode_s(1, ctx_tokens), model.decode_s(n, ctx_tokens)
        per_seq = max(dn - d1, 0.0) / max(n - 1, 1)
        budget = model.budget_tokens
        return ReplicaSpeed(budget, n, max(d1 - per_seq, 0.0), per_seq,
                            model.chunk_extra_s(budget, 0) / budget)


def replica_speeds(cost: CostModel, configs: Sequence[ReplicaConfig]) -> tuple[ReplicaSpeed, ...]:
    """``ReplicaSpeed.of`` each configuration (one latency model per distinct configuration)."""
    memo: dict[ReplicaConfig, ReplicaSpeed] = {}
    for cfg in configs:
        if cfg not in memo:
            memo[cfg] = ReplicaSpeed.of(ReplicaLatencyModel(cost, cfg))
    return tuple(memo[c] for c in configs)


@dataclass(frozen=True)
class SpillRule:
    """What the rule needs besides the replicas' state: each type's SLO and each replica's speed
    (aligned with the dispatch table's replicas; ``None``: a replica the rule knows nothing of, never
    spilled to)."""

    type_slos: tuple[Slo, ...]
    speeds: tuple[ReplicaSpeed | None, ...]

    def for_columns(self, columns: Sequence[int]) -> SpillRule:
        """The rule over a subset of the replicas (column c of the result is ``columns[c]``)."""
        return SpillRule(self.type_slos, tuple(self.speeds[c] for c in columns))


@dataclass(frozen=True)
class Prediction:
    ttft_s: float
    tpot_s: float


def predict(speed: ReplicaSpeed, prefill_tokens: int, num_decoding: int, prompt_tokens: int) -> Prediction:
    """This request's TTFT on the replica, and the TPOT of its decodes while the backlog drains."""
    per_step = max(speed.budget_tokens - num_decoding, 1)
    work = prefill_tokens + prompt_tokens
    steps = math.ceil(work / per_step)
    ttft = steps * speed.decode_s(num_decoding) + work * speed.prefill_s_per_token
    tpot = speed.decode_s(num_decoding + 1) + min(per_step, work) * speed.prefill_s_per_token
    return Prediction(ttft, tpot)


def trace_type_slos(types: RequestTypes, input_tokens: np.ndarray, slo: SloSpec) -> tuple[Slo, ...]:
    """Each request type's SLO on a trace (the tightest of its requests', requests typed as the router
    types them online): what the rule holds a type to."""
    type_id = types.classify_online(input_tokens)
    return tuple(slo.type_slos(type_id, types.names(), input_tokens))


@dataclass
class PlanSpillRules:
    """The spill rule of any plan of one model under fixed per-type SLOs: ``rule_for(configs)`` gives
    the rule over those replicas, in order (step times from the cost model, one latency model per
    distinct configuration, memoised across plans)."""

    cost: CostModel
    type_slos: tuple[Slo, ...]
    _speeds: dict[ReplicaConfig, ReplicaSpeed] = field(default_factory=dict, repr=False)

    def rule_for(self, configs: Sequence[ReplicaConfig]) -> SpillRule:
        for cfg in configs:
            if cfg not in self._speeds:
                self._speeds[cfg] = replica_speeds(self.cost, [cfg])[0]
        return SpillRule(self.type_slos, tuple(self._speeds[c] for c in configs))


def spill_choice(rule: SpillRule, type_id: int, prompt_tokens: int, primary: int,
                 prefill_tokens: Sequence[int], num_decoding: Sequence[int],
                 is_open: Sequence[bool] | None = None) -> int:
    """The replica for the request: ``primary`` unless the rule spills it (see the module docstring).

    ``prefill_tokens[r]``: prompt tokens of the requests replica r holds that have no first token yet;
    ``num_decoding[r]``: its requests past their first token; ``is_open[r]``: whether it takes work
    (all, when not given)."""
    if not 0 <= type_id < len(rule.type_slos):
        raise ConfigError(f"request type {type_id} has no SLO in the spill rule "
                          f"({len(rule.type_slos)} types)")
    if not len(rule.speeds) == len(prefill_tokens) == len(num_decoding):
        raise ConfigError(f"spill rule over {len(rule.speeds)} replicas given the state of "
                          f"{len(prefill_tokens)}")
    slo = rule.type_slos[type_id]
    speed = rule.speeds[primary]
    if speed is None:
        return primary
    base = predict(speed, prefill_tokens[primary], num_decoding[primary], prompt_tokens)
    if base.ttft_s <= SPILL_AT * slo.ttft_s:
        return primary
    tpot_bound = max(slo.tpot_s, base.tpot_s)
    best, best_ttft = primary, math.inf
    for r, sp in enumerate(rule.speeds):
        if r == primary or sp is None or (is_open is not None and not is_open[r]):
            continue
        if num_decoding[r] >= sp.max_seqs:
            continue
        p = predict(sp, prefill_tokens[r], num_decoding[r], prompt_tokens)
        if p.ttft_s <= slo.ttft_s and p.tpot_s <= tpot_bound and p.ttft_s < best_ttft:
            best, best_ttft = r, p.ttft_s
    return best


__all__ = ["PlanSpillRules", "Prediction", "ReplicaSpeed", "SpillRule", "predict", "replica_speeds",
           "spill_choice", "trace_type_slos"]
